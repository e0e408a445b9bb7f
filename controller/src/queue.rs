//! A work queue of object keys, in the manner of client-go's: a key is
//! handled by one worker at a time, and a key that changes while it is being
//! handled runs again afterwards. Requeues after a delay are timers that add
//! the key back.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

struct State<K> {
    pending: VecDeque<K>,
    queued: HashSet<K>,
    processing: HashSet<K>,
    /// Keys added while being processed: queued again when done.
    dirty: HashSet<K>,
    closed: bool,
}

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> WorkQueue<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                pending: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                closed: false,
            }),
            ready: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, key: K) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        if state.processing.contains(&key) {
            state.dirty.insert(key);
            return;
        }
        if state.queued.insert(key.clone()) {
            state.pending.push_back(key);
            drop(state);
            self.ready.notify_one();
        }
    }

    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        let queue = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Waits for the next key; `None` once the queue is closed and drained.
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if let Some(key) = state.pending.pop_front() {
                    state.queued.remove(&key);
                    state.processing.insert(key.clone());
                    // Let another waiting worker look too.
                    if !state.pending.is_empty() {
                        self.ready.notify_one();
                    }
                    return Some(key);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` handled; re-queues it if it changed meanwhile.
    pub fn done(&self, key: &K) {
        let mut state = self.lock();
        state.processing.remove(key);
        if state.dirty.remove(key) && state.queued.insert(key.clone()) {
            state.pending.push_back(key.clone());
            drop(state);
            self.ready.notify_one();
        }
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_rerun_when_changed_during_processing() {
        let queue = WorkQueue::new();
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!(queue.len(), 2);
        let first = queue.next().await.unwrap();
        assert_eq!(first, "a");
        queue.add("a"); // changed while processing
        assert_eq!(queue.next().await, Some("b"));
        assert!(queue.is_empty(), "a is not handed to a second worker");
        queue.done(&"a");
        assert_eq!(queue.next().await, Some("a"));
        queue.done(&"a");
        queue.done(&"b");
        queue.close();
        assert_eq!(queue.next().await, None);
    }

    #[tokio::test]
    async fn delayed_adds_arrive() {
        let queue = WorkQueue::new();
        queue.add_after("later", Duration::from_millis(10));
        let key = tokio::time::timeout(Duration::from_secs(5), queue.next())
            .await
            .unwrap();
        assert_eq!(key, Some("later"));
    }
}
