//! The ledger's witness: the head of the audit chain, written on a schedule to a file
//! outside the database, one line per anchor (`SEQ:HASH AT_MS`), only ever appended.
//!
//! A hash chain proves that no entry was edited, removed or reordered, but someone who
//! can write the database and run the ledger's code can write the whole history again
//! with every hash recomputed, or cut its end off; the chain then checks out by itself.
//! An anchor kept where the database's writers cannot reach tells. The witness keeps
//! one without anyone having to remember: each round checks what was appended since
//! its last anchor (the anchored entry unchanged, every later one following on) and
//! then anchors the new head. A chain found broken is never anchored, and each round
//! says so again until someone looks; `GET /v1/audit/verify` checks against the last
//! anchor when not given one.
//!
//! Where the file lives decides what it proves: beside a PostgreSQL database's
//! servers, on a volume the database's administrators cannot write, or on a file
//! system that only appends (`chattr +a`), it catches them; in the same directory as
//! a SQLite file it catches a change made through the database only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ledger::{Anchor, Ledger, LedgerError, Verification};

/// How often the witness anchors the head, unless told otherwise.
pub const EVERY: Duration = Duration::from_secs(60);

/// An anchor the witness took, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Witnessed {
    /// The anchor (`SEQ:HASH`).
    pub anchor: String,
    /// When it was taken, in Unix milliseconds.
    pub at_ms: i64,
}

/// Failures of the witness.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The file cannot be read or written.
    #[error("the ledger's witness {path} cannot be used: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the file is not an anchor.
    #[error("the ledger's witness {path}, line {line}: {problem}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// The ledger cannot be read.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What one round found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// The ledger is empty: nothing to anchor.
    Empty,
    /// Nothing was appended since the last anchor.
    Unchanged(Anchor),
    /// The new head was anchored.
    Anchored(Anchor),
    /// The chain is broken, or does not hold the last anchor: nothing was anchored.
    Broken(Verification),
}

/// What the last round found, for metrics: whether the chain held, and the entry
/// last anchored.
#[derive(Debug, Default)]
pub struct Health {
    /// Rounds so far.
    pub rounds: AtomicU64,
    /// Whether the last round found the chain broken.
    pub broken: AtomicBool,
    /// The entry last anchored (0 before the first anchor).
    pub anchored_seq: AtomicU64,
}

/// The witness file.
#[derive(Clone, Debug)]
pub struct Witness {
    path: PathBuf,
    health: Arc<Health>,
}

impl Witness {
    /// The witness at `path` (made on its first anchor).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            health: Arc::default(),
        }
    }

    /// What the rounds of this witness (and its clones) found so far.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last anchor taken, if any.
    pub fn last(&self) -> Result<Option<(Anchor, i64)>, WitnessError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(WitnessError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        // A line cut short by a crash mid-write is not an anchor; the one before is.
        let complete = match text.ends_with('\n') {
            true => text.as_str(),
            false => text.rsplit_once('\n').map_or("", |(whole, _)| whole),
        };
        let Some((index, line)) = complete
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .last()
        else {
            return Ok(None);
        };
        let unreadable = |problem: String| WitnessError::Unreadable {
            path: self.path.clone(),
            line: index + 1,
            problem,
        };
        let (anchor, at) = line
            .split_once(' ')
            .ok_or_else(|| unreadable(format!("{line:?} is not `SEQ:HASH AT_MS`")))?;
        let anchor: Anchor = anchor.parse().map_err(unreadable)?;
        let at_ms = at
            .trim()
            .parse::<i64>()
            .map_err(|_| unreadable(format!("{at:?} is not a time in Unix milliseconds")))?;
        Ok(Some((anchor, at_ms)))
    }

    /// The last anchor taken, as the API shows it.
    pub fn last_witnessed(&self) -> Result<Option<Witnessed>, WitnessError> {
        Ok(self.last()?.map(|(anchor, at_ms)| Witnessed {
            anchor: anchor.to_string(),
            at_ms,
        }))
    }

    fn append(&self, anchor: &Anchor, at_ms: i64) -> Result<(), WitnessError> {
        let io = |source| WitnessError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        // One write of one line: appends from two servers sharing the file interleave
        // whole lines.
        file.write_all(format!("{anchor} {at_ms}\n").as_bytes())
            .map_err(io)?;
        file.sync_data().map_err(io)
    }

    /// Checks the ledger from the last anchor on (the whole chain if there is none)
    /// and anchors its head if it moved.
    pub async fn round(&self, ledger: &Ledger, now_ms: i64) -> Result<Round, WitnessError> {
        let round = self.round_inner(ledger, now_ms).await?;
        let health = &self.health;
        health.rounds.fetch_add(1, Ordering::Relaxed);
        health
            .broken
            .store(matches!(round, Round::Broken(_)), Ordering::Relaxed);
        if let Round::Anchored(a) | Round::Unchanged(a) = &round {
            health.anchored_seq.store(a.seq, Ordering::Relaxed);
        }
        Ok(round)
    }

    async fn round_inner(&self, ledger: &Ledger, now_ms: i64) -> Result<Round, WitnessError> {
        let last = self.last()?;
        let found = match &last {
            Some((anchor, _)) => ledger.verify_since(anchor).await?,
            None => ledger.verify().await?,
        };
        if !found.intact {
            return Ok(Round::Broken(found));
        }
        let Ok(head) = found.anchor.parse::<Anchor>() else {
            return Ok(Round::Empty);
        };
        if last.is_some_and(|(anchor, _)| anchor == head) {
            return Ok(Round::Unchanged(head));
        }
        self.append(&head, now_ms)?;
        Ok(Round::Anchored(head))
    }
}

/// Runs a round every `every` until the process ends, saying what it finds.
pub fn run(witness: Witness, ledger: Ledger, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            match witness.round(&ledger, now_ms).await {
                Ok(Round::Anchored(head)) => {
                    tracing::debug!(anchor = %head, file = %witness.path().display(), "ledger head anchored");
                }
                Ok(Round::Empty | Round::Unchanged(_)) => {}
                Ok(Round::Broken(found)) => tracing::error!(
                    problem = found.problem.as_deref().unwrap_or("broken"),
                    file = %witness.path().display(),
                    "the audit ledger does not hold what its witness anchored; nothing more is anchored until it does"
                ),
                Err(e) => tracing::warn!(error = %e, "the ledger's witness failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_whole_line_is_the_anchor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let witness = Witness::new(dir.path().join("w"));
        assert_eq!(witness.last().expect("none yet"), None);
        let a = format!("3:{}", "a".repeat(64));
        let b = format!("7:{}", "b".repeat(64));
        std::fs::write(witness.path(), format!("{a} 10\n\n{b} 20\n7:bb")).expect("write");
        let (anchor, at) = witness.last().expect("read").expect("an anchor");
        assert_eq!((anchor.to_string(), at), (b, 20));
    }

    #[test]
    fn a_line_that_is_not_an_anchor_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let witness = Witness::new(dir.path().join("w"));
        std::fs::write(
            witness.path(),
            format!("1:{} 5\nnonsense\n", "c".repeat(64)),
        )
        .expect("write");
        let err = witness.last().expect_err("unreadable").to_string();
        assert!(err.contains("line 2") && err.contains("nonsense"), "{err}");
    }
}
