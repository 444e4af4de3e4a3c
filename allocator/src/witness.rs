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

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub use berth_api::audit::Witnessed;

use crate::control::{Controller, Next, Now};

use crate::ledger::{Anchor, Ledger, LedgerError, Verification};

/// How much of the file's end is read for the last anchor (a line is under 100
/// bytes).
const TAIL: u64 = 4096;

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

    /// The last anchor taken, if any. Only the end of the file is read (it grows by a
    /// line each time the ledger moves), so this costs the same after years.
    pub fn last(&self) -> Result<Option<(Anchor, i64)>, WitnessError> {
        let io = |source| WitnessError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let len = file.metadata().map_err(io)?.len();
        let start = len.saturating_sub(TAIL);
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).map_err(io)?;
        let tail = String::from_utf8_lossy(&tail);
        // Whole lines only: the first may have begun before the tail, and the last may
        // have been cut short by a crash mid-write (the one before it is the anchor).
        let from = match start {
            0 => 0,
            _ => tail.find('\n').map_or(tail.len(), |i| i + 1),
        };
        let to = tail.rfind('\n').map_or(0, |i| i + 1).max(from);
        let Some(line) = tail[from..to].lines().rfind(|l| !l.trim().is_empty()) else {
            return match start {
                0 => Ok(None),
                _ => Err(self.unreadable("no whole line in the file's last 4 KiB".into())),
            };
        };
        let (anchor, at) = line
            .split_once(' ')
            .ok_or_else(|| self.unreadable(format!("{line:?} is not `SEQ:HASH AT_MS`")))?;
        let anchor: Anchor = anchor.parse().map_err(|e| self.unreadable(e))?;
        let at_ms = at
            .trim()
            .parse::<i64>()
            .map_err(|_| self.unreadable(format!("{at:?} is not a time in Unix milliseconds")))?;
        Ok(Some((anchor, at_ms)))
    }

    /// The error for a last line that is not an anchor, naming its line number (the
    /// whole file is read for it, which only this rare case pays).
    fn unreadable(&self, problem: String) -> WitnessError {
        let text = std::fs::read(&self.path).unwrap_or_default();
        let whole = match text.iter().rposition(|b| *b == b'\n') {
            Some(i) => &text[..=i],
            None => &[][..],
        };
        let line = String::from_utf8_lossy(whole)
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .last()
            .map_or(1, |(i, _)| i + 1);
        WitnessError::Unreadable {
            path: self.path.clone(),
            line,
            problem,
        }
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

/// The witness's loop: a round every `every`, saying what it finds.
#[derive(Debug)]
pub struct Anchoring {
    witness: Witness,
    ledger: Ledger,
    every: Duration,
}

impl Anchoring {
    /// `witness` anchoring the head of `ledger`.
    pub fn new(witness: Witness, ledger: Ledger, every: Duration) -> Self {
        Self {
            witness,
            ledger,
            every,
        }
    }
}

impl Controller for Anchoring {
    const NAME: &'static str = "witness";

    async fn step(&mut self, now: Now) -> Next {
        let witness = &self.witness;
        match witness.round(&self.ledger, now.wall_ms).await {
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
        Next::After(self.every)
    }
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
    fn a_long_witness_is_read_from_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let witness = Witness::new(dir.path().join("w"));
        let text: String = (1..=500)
            .map(|i| format!("{i}:{} {i}\n", "d".repeat(64)))
            .collect();
        assert!(text.len() as u64 > 5 * TAIL);
        std::fs::write(witness.path(), &text).expect("write");
        let (anchor, at) = witness.last().expect("read").expect("an anchor");
        assert_eq!((anchor.seq, at), (500, 500));
        std::fs::write(witness.path(), format!("{text}oops\n")).expect("write");
        let err = witness.last().expect_err("unreadable").to_string();
        assert!(err.contains("line 501") && err.contains("oops"), "{err}");
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
