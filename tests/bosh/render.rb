#!/usr/bin/env ruby
# Renders a BOSH job's templates (and its monit file) the way the director does: ERB with
# trim_mode "-", `p(name[, default])` looking the property up in the manifest's properties and
# then in the spec's defaults, and raising like BOSH when neither has it; files under bin/ are
# made executable. A test harness, not part of the release.
#
# Usage: render.rb JOB_DIR PROPERTIES_JSON OUT_DIR [BOSH_ROOT]
#   BOSH_ROOT: replace /var/vcap in the rendered files with this directory (a BOSH-like root).
require 'erb'
require 'json'
require 'yaml'
require 'fileutils'

class JobRenderer
  def initialize(spec, properties)
    @spec = spec
    @properties = properties
  end

  def dig(hash, dotted)
    dotted.split('.').reduce([true, hash]) do |(found, node), key|
      return [false, nil] unless found && node.is_a?(Hash) && node.key?(key)
      [true, node[key]]
    end
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

  def render(text)
    ERB.new(text, trim_mode: '-').result(binding)
  end
end

job_dir, props_json, out_dir, bosh_root = ARGV
abort('usage: render.rb JOB_DIR PROPERTIES_JSON OUT_DIR [BOSH_ROOT]') unless out_dir
spec = YAML.safe_load(File.read(File.join(job_dir, 'spec')))
renderer = JobRenderer.new(spec, JSON.parse(File.read(props_json)))
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
