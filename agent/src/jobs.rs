//! Long work on storage copies (checksums, copies) run in the background
//! under an id that says what they do ([`VolumeJob::id`]). Asking for a job
//! that is under way answers its progress instead of starting it again, so
//! a controller that restarted or lost its connection never doubles the
//! reading of a large volume; a finished job's result is kept a while for
//! the caller that comes back for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use stratus_core::agent_api::{AgentErrorDetail, JobStatus, StoredContent, VolumeJob};

use crate::error::AgentError;

/// Jobs known at once (under way or finished and kept): beyond it a new job
/// is refused as busy until some finish or expire.
pub const MAX_JOBS: usize = 256;
/// How long a finished copy's result is kept for its caller to fetch.
pub const KEPT_FOR: Duration = Duration::from_secs(10 * 60);
/// A checksum's result is kept shorter: a verification asked for later
/// reads the volume again rather than getting an old answer.
pub const CHECKSUM_KEPT_FOR: Duration = Duration::from_secs(2 * 60);

struct Entry {
    job: VolumeJob,
    started: Instant,
    outcome: Option<(Instant, Result<StoredContent, AgentErrorDetail>)>,
    /// Its version was rewritten or deleted while it ran: its result, when
    /// it comes, says nothing and is dropped.
    stale: bool,
}

impl Entry {
    fn kept_for(&self) -> Duration {
        match self.job {
            VolumeJob::Checksum { .. } => CHECKSUM_KEPT_FOR,
            VolumeJob::Copy { .. } | VolumeJob::Capture { .. } => KEPT_FOR,
        }
    }

    fn status(&self) -> JobStatus {
        match &self.outcome {
            None => JobStatus::Running {
                elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            },
            Some((_, Ok(result))) => JobStatus::Succeeded {
                result: result.clone(),
            },
            Some((_, Err(error))) => JobStatus::Failed {
                error: error.clone(),
            },
        }
    }
}

/// What [`Jobs::start`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// A new job: the caller runs it and reports with [`Jobs::finish`].
    New,
    /// The same job was already known: its status.
    Known(JobStatus),
}

/// The jobs of one agent, by volume and id.
#[derive(Clone, Default)]
pub struct Jobs {
    entries: Arc<Mutex<HashMap<(String, String), Entry>>>,
}

impl Jobs {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `job` of `volume` unless it is known.
    pub fn start(&self, volume: &str, job: &VolumeJob) -> Result<Started, AgentError> {
        let mut entries = self.lock();
        let now = Instant::now();
        entries.retain(|_, entry| {
            let kept_for = entry.kept_for();
            entry
                .outcome
                .as_ref()
                .is_none_or(|(at, _)| now.duration_since(*at) < kept_for)
        });
        let key = (volume.to_owned(), job.id());
        if let Some(entry) = entries.get(&key) {
            return Ok(Started::Known(entry.status()));
        }
        if entries.len() >= MAX_JOBS {
            return Err(AgentError::Busy(format!(
                "{MAX_JOBS} storage jobs are under way or waiting to be fetched"
            )));
        }
        entries.insert(
            key,
            Entry {
                job: job.clone(),
                started: now,
                outcome: None,
                stale: false,
            },
        );
        Ok(Started::New)
    }

    /// Records how job `id` of `volume` ended.
    pub fn finish(&self, volume: &str, id: &str, outcome: Result<StoredContent, AgentError>) {
        let mut entries = self.lock();
        let key = (volume.to_owned(), id.to_owned());
        if entries.get(&key).is_some_and(|e| e.stale) {
            entries.remove(&key);
            return;
        }
        if let Some(entry) = entries.get_mut(&key) {
            let outcome = outcome.map_err(|error| AgentErrorDetail {
                code: error.code(),
                message: error.to_string(),
            });
            entry.outcome = Some((Instant::now(), outcome));
        }
    }

    /// Where job `id` of `volume` stands, if it is known.
    pub fn status(&self, volume: &str, id: &str) -> Option<JobStatus> {
        self.lock()
            .get(&(volume.to_owned(), id.to_owned()))
            .map(Entry::status)
    }

    /// Forgets the finished jobs of `volume` that read or wrote `version`
    /// (`None`: any version): that version is being rewritten or deleted,
    /// so their results no longer say anything about it.
    pub fn forget(&self, volume: &str, version: Option<u64>) {
        let concerned = |name: &String, entry: &Entry| {
            name == volume && version.is_none_or(|version| entry.job.touches(version))
        };
        let mut entries = self.lock();
        for ((name, _), entry) in entries.iter_mut() {
            if entry.outcome.is_none() && concerned(name, entry) {
                entry.stale = true;
            }
        }
        entries.retain(|(name, _), entry| entry.outcome.is_none() || !concerned(name, entry));
    }

    /// Jobs under way.
    pub fn running(&self) -> usize {
        self.lock().values().filter(|e| e.outcome.is_none()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(version: u64) -> StoredContent {
        StoredContent {
            version,
            bytes: 1,
            sha256: "00".into(),
            live_copy: None,
        }
    }

    #[test]
    fn a_job_asked_for_again_is_the_same_job_until_its_result_is_forgotten() {
        let jobs = Jobs::default();
        let checksum = VolumeJob::Checksum {
            version: 3,
            bytes: 10,
        };
        assert_eq!(jobs.start("s", &checksum).unwrap(), Started::New);
        assert!(matches!(
            jobs.start("s", &checksum).unwrap(),
            Started::Known(JobStatus::Running { .. })
        ));
        assert_eq!(jobs.running(), 1);
        jobs.finish("s", &checksum.id(), Ok(stored(3)));
        assert_eq!(
            jobs.start("s", &checksum).unwrap(),
            Started::Known(JobStatus::Succeeded { result: stored(3) })
        );
        // Another volume's job of the same id is another job.
        assert_eq!(jobs.start("t", &checksum).unwrap(), Started::New);
        // Rewriting another version keeps the result; this one drops it.
        jobs.forget("s", Some(4));
        assert!(jobs.status("s", &checksum.id()).is_some());
        jobs.forget("s", Some(3));
        assert_eq!(jobs.status("s", &checksum.id()), None);
        assert_eq!(jobs.start("s", &checksum).unwrap(), Started::New);
    }

    /// Controllers asking for one job at once (a retry racing the first
    /// call, a second replica): it is started exactly once.
    #[test]
    fn a_job_asked_for_by_many_at_once_is_started_once() {
        for _ in 0..50 {
            let jobs = Jobs::default();
            let copy = VolumeJob::Copy {
                from: 1,
                to: 2,
                pause_guest: true,
            };
            let started: usize = std::thread::scope(|scope| {
                let askers: Vec<_> = (0..8)
                    .map(|_| scope.spawn(|| jobs.start("s", &copy).unwrap() == Started::New))
                    .collect();
                askers
                    .into_iter()
                    .map(|a| usize::from(a.join().unwrap()))
                    .sum()
            });
            assert_eq!(started, 1);
        }
    }

    #[test]
    fn a_job_whose_version_changed_while_it_ran_leaves_no_result() {
        let jobs = Jobs::default();
        let checksum = VolumeJob::Checksum {
            version: 3,
            bytes: 10,
        };
        jobs.start("s", &checksum).unwrap();
        jobs.forget("s", Some(3));
        jobs.finish("s", &checksum.id(), Ok(stored(3)));
        assert_eq!(
            jobs.status("s", &checksum.id()),
            None,
            "asked again, it runs again"
        );
    }

    #[test]
    fn a_job_under_way_is_never_forgotten_and_the_table_is_bounded() {
        let jobs = Jobs::default();
        let copy = VolumeJob::Copy {
            from: 1,
            to: 2,
            pause_guest: false,
        };
        jobs.start("s", &copy).unwrap();
        jobs.forget("s", None);
        assert!(matches!(
            jobs.status("s", &copy.id()),
            Some(JobStatus::Running { .. })
        ));
        for n in 1..MAX_JOBS {
            let job = VolumeJob::Checksum {
                version: n as u64,
                bytes: 1,
            };
            assert_eq!(jobs.start("s", &job).unwrap(), Started::New);
        }
        let one_more = VolumeJob::Checksum {
            version: 0,
            bytes: 1,
        };
        assert!(matches!(
            jobs.start("s", &one_more),
            Err(AgentError::Busy(_))
        ));
        assert!(
            matches!(jobs.start("s", &copy), Ok(Started::Known(_))),
            "a known job is still answered when the table is full"
        );
    }
}
