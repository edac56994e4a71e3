#!/usr/bin/env ruby
# Renders a BOSH job's templates (and its monit file) the way the director does: ERB with
# trim_mode "-", `p(name[, default])` looking the property up in the manifest's properties and
# then in the spec's defaults, and raising like BOSH when neither has it; `link(name)` and
# `if_link(name) do |l| ... end.else do ... end` over the links the job consumes (as the
# director's bosh-template: a link is present when it has instances; `l.p(name[, default])`
# reads the link's properties); files under bin/ are made executable. A test harness, not
# part of the release.
#
# Usage: render.rb JOB_DIR PROPERTIES_JSON OUT_DIR [BOSH_ROOT] [LINKS_JSON]
#   BOSH_ROOT: replace /var/vcap in the rendered files with this directory (a BOSH-like root;
#   "" for none). LINKS_JSON: {"NAME": {"instances": [...], "properties": {...}}}.
require 'erb'
require 'json'
require 'yaml'
require 'fileutils'

def dig(hash, dotted)
  dotted.split('.').reduce([true, hash]) do |(found, node), key|
    return [false, nil] unless found && node.is_a?(Hash) && node.key?(key)
    [true, node[key]]
  end
end

# A consumed link, as bosh-template's EvaluationLink.
class Link
  attr_reader :instances

  def initialize(spec)
    @properties = spec['properties'] || {}
    @instances = spec['instances']
  end

  def p(name, *default)
    found, value = dig(@properties, name)
    return value if found && !value.nil?
    return default.first unless default.empty?
    raise "Can't find link property '[\"#{name}\"]'"
  end
end

class ActiveElseBlock
  def else
    yield
  end
end

class InactiveElseBlock
  def else; end
end

class JobRenderer
  def initialize(spec, properties, links)
    @spec = spec
    @properties = properties
    @links = links
  end

  def p(name, *default)
    declared = (@spec['properties'] || {})
    raise "Can't find property '[\"#{name}\"]'" unless declared.key?(name) || !default.empty?
    found, value = dig(@properties, name)
    return value if found
    return declared[name]['default'] if declared.key?(name) && declared[name].key?('default')
    return default.first unless default.empty?
    raise "Can't find property '[\"#{name}\"]'"
  end

  def if_p(*names)
    values = names.map { |n| found, v = dig(@properties, n); found ? v : (return) }
    yield(*values)
  end

  def link(name)
    spec = @links[name]
    raise "Can't find link '#{name}'" unless spec.is_a?(Hash) && spec.key?('instances')
    Link.new(spec)
  end

  def if_link(name)
    spec = @links[name]
    return ActiveElseBlock.new unless spec.is_a?(Hash) && spec.key?('instances')
    yield Link.new(spec)
    InactiveElseBlock.new
  end

  def render(text)
    ERB.new(text, trim_mode: '-').result(binding)
  end
end

job_dir, props_json, out_dir, bosh_root, links_json = ARGV
abort('usage: render.rb JOB_DIR PROPERTIES_JSON OUT_DIR [BOSH_ROOT] [LINKS_JSON]') unless out_dir
bosh_root = nil if bosh_root == ''
spec = YAML.safe_load(File.read(File.join(job_dir, 'spec')))
links = links_json ? JSON.parse(File.read(links_json)) : {}
renderer = JobRenderer.new(spec, JSON.parse(File.read(props_json)), links)
relocate = ->(text) { bosh_root ? text.gsub('/var/vcap', bosh_root) : text }

begin
  rendered = (spec['templates'] || {}).map do |source, dest|
    [dest, relocate.call(renderer.render(File.read(File.join(job_dir, 'templates', source))))]
  end
  monit = relocate.call(renderer.render(File.read(File.join(job_dir, 'monit'))))
rescue StandardError => e
  warn "Error filling in template for job '#{spec['name']}': #{e.message}"
  exit 1
end

rendered.each do |dest, text|
  path = File.join(out_dir, dest)
  FileUtils.mkdir_p(File.dirname(path))
  File.write(path, text)
  File.chmod(dest.start_with?('bin/') ? 0o755 : 0o644, path)
end
File.write(File.join(out_dir, 'monit'), monit)
