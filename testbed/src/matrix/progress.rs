//! Progress of a matrix: on a terminal, a bar of finished cells and one
//! spinner per running boot; elsewhere (CI logs) one plain line per
//! milestone and per finished cell.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::MatrixCell;
use crate::runner::RunEvent;

pub struct MatrixUi {
    bars: Option<(MultiProgress, ProgressBar)>,
    total: usize,
    done: AtomicUsize,
}

impl MatrixUi {
    pub fn new(total: usize) -> MatrixUi {
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::new();
            let bar = multi.add(ProgressBar::new(total as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "[{elapsed_precise}] {bar:30} {pos}/{len} cells  {msg}",
                )
                .expect("template parses"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            (multi, bar)
        });
        MatrixUi {
            bars,
            total,
            done: AtomicUsize::new(0),
        }
    }

    /// A line that stays.
    pub fn line(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// What the matrix as a whole is doing (fetching a kernel...).
    pub fn status(&self, text: &str) {
        match &self.bars {
            Some((_, bar)) => bar.set_message(text.to_owned()),
            None => eprintln!("{text}"),
        }
    }

    /// A spinner for one running boot, removed when dropped.
    pub fn unit(&self, label: &str) -> UnitProgress {
        let bar = self.bars.as_ref().map(|(multi, _)| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("  {spinner} {prefix}: {msg}")
                    .expect("template parses"),
            );
            bar.set_prefix(label.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        UnitProgress {
            events: UnitEvents {
                bar,
                label: label.to_owned(),
            },
        }
    }

    pub fn cell_done(&self, cell: &MatrixCell) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let time = cell.seconds.map(|s| format!("{s:.1}s")).unwrap_or_default();
        self.line(&format!(
            "[{done}/{}] {} {} {} {} {time}",
            self.total,
            cell.kernel,
            cell.variant,
            cell.scenario,
            cell.result.label()
        ));
        if let Some((_, bar)) = &self.bars {
            bar.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some((multi, bar)) = &self.bars {
            bar.finish_and_clear();
            let _ = multi.clear();
        }
    }
}

pub struct UnitProgress {
    events: UnitEvents,
}

/// Where a unit's events go: cloneable, for a restore on a task of its own.
#[derive(Clone)]
pub struct UnitEvents {
    bar: Option<ProgressBar>,
    label: String,
}

impl UnitProgress {
    pub fn event(&self, event: RunEvent) {
        self.events.event(event)
    }

    pub fn events(&self) -> UnitEvents {
        self.events.clone()
    }
}

impl UnitEvents {
    pub fn event(&self, event: RunEvent) {
        let text = match event {
            RunEvent::QemuStarted { .. } => "booting".to_owned(),
            RunEvent::AgentReady { after, .. } => {
                format!("agent ready after {:.1}s", after.as_secs_f64())
            }
            RunEvent::ScenarioStarted {
                scenario, steps, ..
            } => format!("{scenario} ({steps} steps)"),
            RunEvent::TestStarted { test, .. } => test.clone(),
            RunEvent::StepFinished {
                scenario,
                index,
                action,
                ..
            } => {
                if self.bar.is_none() {
                    return;
                }
                format!("{scenario}: step {} {action}", index + 1)
            }
            RunEvent::PoweringOff { .. } => "powering off".to_owned(),
            RunEvent::BootingForTheRest { .. } | RunEvent::Retrying { .. } => {
                // a line of its own: the bar's message is gone by the next event
                let Some(notice) = event.notice() else { return };
                let text = format!("{}: {notice}", self.label);
                match &self.bar {
                    Some(bar) => bar.println(text),
                    None => eprintln!("{text}"),
                }
                return;
            }
            _ => return,
        };
        match &self.bar {
            Some(bar) => bar.set_message(text),
            None => eprintln!("{}: {text}", self.label),
        }
    }
}

impl Drop for UnitProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.events.bar {
            bar.finish_and_clear();
        }
    }
}
