//! Showing reconcile progress: a live line per service on a terminal, plain lines
//! otherwise (pipes, CI), nothing with `--json`.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use berth_node_runtime::{Progress, Step};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Live lines, redrawn in place.
    Live,
    /// One line per event.
    Plain,
    /// Nothing (machine-readable output follows).
    Quiet,
}

impl Mode {
    /// Live on a terminal, plain elsewhere, quiet for JSON.
    pub(crate) fn pick(json: bool) -> Self {
        if json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Live
        } else {
            Mode::Plain
        }
    }
}

/// Starts showing the events sent on the returned channel; the task ends when the
/// sender is dropped.
pub(crate) fn show(mode: Mode) -> (mpsc::UnboundedSender<Progress>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Progress>();
    let task = tokio::spawn(async move {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner:.cyan} {prefix:<24} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
        while let Some(event) = rx.recv().await {
            let (key, text, done) = describe(&event);
            match mode {
                Mode::Quiet => {}
                Mode::Plain => eprintln!("{key:<24} {text}"),
                Mode::Live => {
                    let bar = bars.entry(key.clone()).or_insert_with(|| {
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(style.clone());
                        bar.set_prefix(key.clone());
                        bar.enable_steady_tick(std::time::Duration::from_millis(100));
                        bar
                    });
                    if done {
                        bar.finish_with_message(text);
                    } else {
                        bar.set_message(text);
                    }
                }
            }
        }
        for bar in bars.values() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
    });
    (tx, task)
}

fn describe(event: &Progress) -> (String, String, bool) {
    match event {
        Progress::Replica {
            service,
            replica,
            step,
        } => {
            let (text, done) = step_text(step);
            (format!("{service}.{replica}"), text, done)
        }
        Progress::Waiting {
            service,
            dependency,
            condition,
        } => {
            let what = match condition {
                berth_protocol::topology::Condition::ServiceStarted => "to start",
                berth_protocol::topology::Condition::ServiceHealthy => "to be healthy",
                berth_protocol::topology::Condition::ServiceCompletedSuccessfully => "to complete",
            };
            (
                service.clone(),
                format!("waiting for {dependency} {what}"),
                false,
            )
        }
        Progress::Pull {
            image,
            layer,
            text,
            done,
        } => (format!("pull {image} {layer}"), text.clone(), *done),
        Progress::Object { kind, name, step } => {
            let (text, done) = step_text(step);
            (format!("{kind} {name}"), text, done)
        }
    }
}

fn step_text(step: &Step) -> (String, bool) {
    match step {
        Step::Unchanged => ("unchanged".into(), true),
        Step::Creating => ("creating".into(), false),
        Step::Recreating => ("recreating".into(), false),
        Step::Starting => ("starting".into(), false),
        Step::Running => ("running".into(), true),
        Step::Healthy => ("healthy".into(), true),
        Step::Completed => ("completed".into(), true),
        Step::Removing => ("removing".into(), false),
        Step::Removed => ("removed".into(), true),
        Step::Failed(why) => (format!("failed: {why}"), true),
        Step::Placed { node } => (format!("placed on {node}"), false),
        Step::Reported(state) => (state.clone(), false),
    }
}
