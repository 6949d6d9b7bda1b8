//! Where a VM's start-up time goes, phase by phase, in one line at info level (the
//! benchmarks read it; a user sees it with `RUST_LOG=info`).

use std::fmt;
use std::time::{Duration, Instant};

/// Phases timed back to back: from passvm's start to its first vCPU (configuration,
/// discovery, then `Vm::build`'s: the "start-up" line), or from the stop to the end of
/// the teardown (the "tear-down" line).
#[derive(Debug)]
pub struct PhaseTimings {
    label: &'static str,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl PhaseTimings {
    /// Starts the start-up clock.
    pub fn start() -> Self {
        Self::named("start-up")
    }

    /// Starts a clock whose line begins with `label`.
    pub fn named(label: &'static str) -> Self {
        Self {
            label,
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Ends `phase` now (it began where the previous one ended).
    pub fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.phases.push((phase, now - self.last));
        self.last = now;
    }

    fn total(&self) -> Duration {
        self.phases.iter().map(|p| p.1).sum()
    }
}

impl fmt::Display for PhaseTimings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(f, "{} {:.1} ms:", self.label, ms(self.total()))?;
        for (i, (name, d)) in self.phases.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{name} {:.1} ms", ms(*d))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_to_the_total_in_order() {
        let mut t = PhaseTimings::start();
        t.phases = vec![
            ("kvm", Duration::from_micros(1200)),
            ("ram", Duration::from_micros(300)),
            ("devices", Duration::from_millis(20)),
        ];
        assert_eq!(
            t.to_string(),
            "start-up 21.5 ms: kvm 1.2 ms, ram 0.3 ms, devices 20.0 ms"
        );
        t.mark("vcpus");
        assert_eq!(t.phases.len(), 4);
        let mut down = PhaseTimings::named("tear-down");
        down.phases = vec![("vcpus", Duration::from_millis(2))];
        assert_eq!(down.to_string(), "tear-down 2.0 ms: vcpus 2.0 ms");
        assert!(t.to_string().contains(", vcpus "));
        assert!(t.total() >= Duration::from_micros(21_500));
    }
}
