//! Turns runner and image events into progress on the terminal. On a
//! terminal a spinner shows the current step; elsewhere (CI logs) each
//! milestone is one plain line.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::runner::RunEvent;

pub struct Ui {
    bar: Option<ProgressBar>,
}

impl Ui {
    pub fn new() -> Ui {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed:>3}] {msg}").unwrap());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Ui { bar }
    }

    /// A line that stays on screen.
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// The current activity, replaced by the next one.
    pub fn status(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.set_message(text),
            None => eprintln!("{text}"),
        }
    }

    pub fn images(&self, progress: images::Progress) {
        self.status(format!("{progress}"));
    }

    pub fn run(&self, event: RunEvent) {
        match event {
            RunEvent::QemuStarted { variant, .. } => self.status(format!("{variant}: booting")),
            RunEvent::AgentReady { variant, after } => self.status(format!(
                "{variant}: agent ready after {:.1}s",
                after.as_secs_f64()
            )),
            RunEvent::ScenarioStarted {
                variant,
                scenario,
                steps,
            } => self.status(format!("{variant}: {scenario} ({steps} steps)")),
            RunEvent::StepFinished {
                variant,
                scenario,
                index,
                action,
            } => {
                if self.bar.is_some() {
                    self.status(format!(
                        "{variant}: {scenario}: step {} {action}",
                        index + 1
                    ));
                }
            }
            RunEvent::ScenarioFinished { .. } => {}
            RunEvent::TestStarted { variant, test } => self.status(format!("{variant}: {test}")),
            RunEvent::PoweringOff { variant } => {
                if self.bar.is_some() {
                    self.status(format!("{variant}: powering off"));
                }
            }
            RunEvent::BootingForTheRest { variant, .. } | RunEvent::Retrying { variant, .. } => {
                if let Some(notice) = event.notice() {
                    self.line(&format!("{variant}: {notice}"))
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Default for Ui {
    fn default() -> Self {
        Ui::new()
    }
}
