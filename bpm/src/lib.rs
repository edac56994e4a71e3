//! bbr-bpm: the typed model of bpm's `bpm.yml`, bpm's own validation rules and the `bpm run`
//! command line. Built out by the bpm backend issue; the runner depends on it from then on.
