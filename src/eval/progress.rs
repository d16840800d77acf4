//! A one-line progress display on stderr: done / total, errors, judgments/s, ETA.

use std::io::Write;
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: usize,
    /// Done before this process started (a resumed run); not counted in the rate.
    resumed: usize,
    started: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    pub fn new(label: &str, total: usize, resumed: usize) -> Self {
        Self {
            label: label.into(),
            total,
            resumed,
            started: Instant::now(),
            last_draw: None,
        }
    }

    /// Redraws at most four times a second, and always for the last judgment.
    pub fn update(&mut self, done: usize, errors: usize) {
        let now = Instant::now();
        if done < self.total
            && self
                .last_draw
                .is_some_and(|t| now - t < Duration::from_millis(250))
        {
            return;
        }
        self.last_draw = Some(now);
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = (done - self.resumed.min(done)) as f64 / elapsed.max(1e-9);
        let eta = if rate > 0.0 {
            format_duration((self.total - done.min(self.total)) as f64 / rate)
        } else {
            "?".into()
        };
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r[{}] {done}/{} judged ({errors} errors) {rate:.2}/s ETA {eta}   ",
            self.label, self.total
        );
        if done >= self.total {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
