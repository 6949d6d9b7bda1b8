//! The bed's run journal: how each scenario run ended, how many attempts it took and
//! whether its pass was slow, so a rising hang rate shows in CI logs instead of
//! hiding behind the retries.
//!
//! - `PASSVM_BED_JOURNAL=FILE` (set by `bed.sh test` and `bed.sh soak`): one
//!   tab-separated line per [`Scenario::run`](super::Scenario::run) is appended
//!   (see [`Entry::line`]); the shell reads it for its closing summary.
//! - A pass is *slow* when L2 or L1 reported a lost timer wakeup ([`SLOW_SIGNS`]: the
//!   stall that recovers by itself, docs/test-bed.md, "Known hangs"), or when it took
//!   far longer than the same test's usual time. The usual time is the median of its
//!   last clean passes, kept in `PASSVM_CACHE/bed-times.tsv` across runs and checkouts.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Console lines by which a kernel says a timer interrupt never came, though the
/// run went on: RCU's grace-period kthread waited far past its timeout.
pub const SLOW_SIGNS: &[&str] = &["timer wakeup didn't happen", "kthread starved for"];

/// How many clean passes of a test the usual time is taken from.
const HISTORY: usize = 10;
/// A pass is slow when it took more than this many times the usual time...
const SLOW_FACTOR: f64 = 2.0;
/// ...and at least this much longer (short scenarios vary by seconds).
const SLOW_MARGIN: Duration = Duration::from_secs(20);

/// How a run (after its retries) ended, as the journal writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// QEMU exited by itself and the scenario returned 0.
    Pass,
    /// The bed stopped it for silence or a lockup report.
    Hung(String),
    /// The guest died at the CPU level (triple fault, KVM internal error).
    Crash(String),
    /// Any other failure (a scenario's own, a deadline).
    Fail(String),
}

impl End {
    fn word(&self) -> &'static str {
        match self {
            End::Pass => "pass",
            End::Hung(_) => "hung",
            End::Crash(_) => "crash",
            End::Fail(_) => "fail",
        }
    }

    fn detail(&self) -> &str {
        match self {
            End::Pass => "",
            End::Hung(d) | End::Crash(d) | End::Fail(d) => d,
        }
    }
}

/// One journal line.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The test that ran the scenario (its libtest name), or the scenario's name.
    pub test: String,
    /// The scenario script.
    pub scenario: String,
    /// How the last attempt ended.
    pub end: End,
    /// Runs it took (1 when nothing was retried).
    pub attempts: usize,
    /// The last attempt's wall time.
    pub elapsed: Duration,
    /// Why a pass counts as slow, if it does.
    pub slow: Option<String>,
    /// How each retried attempt ended, with its log path.
    pub retried: Vec<String>,
}

impl Entry {
    /// `test scenario end attempts seconds slow detail retried`, tab-separated; empty
    /// fields are `-`, tabs and newlines inside fields become spaces.
    pub fn line(&self) -> String {
        let field = |s: &str| {
            let s = s.replace(['\t', '\n'], " ");
            if s.is_empty() {
                "-".to_owned()
            } else {
                s
            }
        };
        [
            field(&self.test),
            field(&self.scenario),
            self.end.word().to_owned(),
            self.attempts.to_string(),
            format!("{:.1}", self.elapsed.as_secs_f64()),
            field(self.slow.as_deref().unwrap_or("")),
            field(self.end.detail()),
            field(&self.retried.join(" | ")),
        ]
        .join("\t")
    }
}

/// The first console line that says a timer wakeup was lost, if any.
pub fn slow_sign(log: &str) -> Option<&str> {
    log.lines()
        .find(|l| SLOW_SIGNS.iter().any(|s| l.contains(s)))
        .map(str::trim)
}

/// Consecutive L2 console lines with one timestamp that mark a frozen L2 clock: a good
/// boot has 7 at the hand-over to the LAPIC timer, every stalled run of 2026-12-01/02
/// had 80 or more (docs/test-bed.md, "The frozen L2 clock").
const FROZEN_CLOCK_LINES: usize = 40;

/// "L2's clock stood still at T s for N console lines" when the longest run of L2 lines
/// sharing a (non-zero) printk timestamp reaches [`FROZEN_CLOCK_LINES`].
pub fn frozen_clock(log: &str) -> Option<String> {
    let stamp = |l: &str| -> Option<String> {
        let rest = l.strip_prefix("L2| [")?;
        let (ts, _) = rest.split_once(']')?;
        let ts = ts.trim();
        (ts != "0.000000").then(|| ts.to_owned())
    };
    let (mut best, mut best_len) = (String::new(), 0usize);
    let (mut cur, mut cur_len) = (String::new(), 0usize);
    for ts in log.lines().filter_map(stamp) {
        if ts == cur {
            cur_len += 1;
        } else {
            cur = ts;
            cur_len = 1;
        }
        if cur_len > best_len {
            best = cur.clone();
            best_len = cur_len;
        }
    }
    (best_len >= FROZEN_CLOCK_LINES)
        .then(|| format!("L2's clock stood still at {best} s for {best_len} console lines"))
}

/// Whether `elapsed` is slow against earlier clean passes (`history`, seconds);
/// `None` while there are fewer than three to compare with.
pub fn slow_against(elapsed: Duration, history: &[f64]) -> Option<String> {
    if history.len() < 3 {
        return None;
    }
    let mut sorted = history.to_vec();
    sorted.sort_by(f64::total_cmp);
    let usual = sorted[sorted.len() / 2];
    let secs = elapsed.as_secs_f64();
    (secs > usual * SLOW_FACTOR && secs > usual + SLOW_MARGIN.as_secs_f64())
        .then(|| format!("took {secs:.0} s, usually {usual:.0} s"))
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PASSVM_CACHE") {
        return Some(dir.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("passvm"))
}

fn times_file() -> Option<PathBuf> {
    cache_dir().map(|d| d.join("bed-times.tsv"))
}

/// The last clean passes of `test`, in seconds.
pub fn history(test: &str) -> Vec<f64> {
    let Some(text) = times_file().and_then(|f| fs::read_to_string(f).ok()) else {
        return Vec::new();
    };
    let mut times: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(t, _)| *t == test)
        .filter_map(|(_, s)| s.trim().parse().ok())
        .collect();
    let skip = times.len().saturating_sub(HISTORY);
    times.drain(..skip);
    times
}

/// Appends a clean pass to the history the usual time comes from. Best effort: a
/// cache that cannot be written only loses the comparison.
pub fn remember(test: &str, elapsed: Duration) {
    let Some(file) = times_file() else { return };
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(file) {
        let _ = writeln!(f, "{test}\t{:.1}", elapsed.as_secs_f64());
    }
}

/// Appends `entry` to `PASSVM_BED_JOURNAL`, when it is set. A journal that was asked
/// for but cannot be written is an error of the bed: the summary would lie.
pub fn write(entry: &Entry) {
    let Some(path) = std::env::var_os("PASSVM_BED_JOURNAL") else {
        return;
    };
    let result = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{}", entry.line()));
    if let Err(e) = result {
        panic!(
            "cannot append to the bed journal {} (PASSVM_BED_JOURNAL): {e}",
            PathBuf::from(path).display()
        );
    }
}
