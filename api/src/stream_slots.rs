//! Content streams in flight, counted per account and per hypervisor: one
//! customer's slow uploads or downloads cannot hold most of an agent's
//! connections, nor the API's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Content streams one account may have in flight at once.
pub const PER_ACCOUNT: usize = 4;
/// Content streams to or from one hypervisor's agent at once (its agent
/// serves 256 connections, most of them for the controller).
pub const PER_HYPERVISOR: usize = 32;

#[derive(Debug, Default)]
struct Counts {
    accounts: HashMap<String, usize>,
    hypervisors: HashMap<String, usize>,
}

/// The streams in flight.
#[derive(Debug, Clone, Default)]
pub struct StreamSlots {
    counts: Arc<Mutex<Counts>>,
}

/// A stream's place, given back when dropped (when the stream ends, well
/// or not).
#[derive(Debug)]
pub struct StreamSlot {
    counts: Arc<Mutex<Counts>>,
    account: String,
    hypervisor: String,
}

/// Which limit a refused stream ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Account,
    Hypervisor,
}

impl StreamSlots {
    /// A place for a stream of `account` through `hypervisor`'s agent.
    pub fn take(&self, account: &str, hypervisor: &str) -> Result<StreamSlot, Full> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.accounts.get(account).copied().unwrap_or(0) >= PER_ACCOUNT {
            return Err(Full::Account);
        }
        if counts.hypervisors.get(hypervisor).copied().unwrap_or(0) >= PER_HYPERVISOR {
            return Err(Full::Hypervisor);
        }
        *counts.accounts.entry(account.to_owned()).or_default() += 1;
        *counts.hypervisors.entry(hypervisor.to_owned()).or_default() += 1;
        Ok(StreamSlot {
            counts: self.counts.clone(),
            account: account.to_owned(),
            hypervisor: hypervisor.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let Counts {
            accounts,
            hypervisors,
        } = &mut *counts;
        for (map, key) in [(accounts, &self.account), (hypervisors, &self.hypervisor)] {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_account_and_per_hypervisor_and_given_back() {
        let slots = StreamSlots::default();
        let mine: Vec<_> = (0..PER_ACCOUNT)
            .map(|_| slots.take("acc-1", "hv1").unwrap())
            .collect();
        assert_eq!(slots.take("acc-1", "hv2").unwrap_err(), Full::Account);
        let others: Vec<_> = (0..PER_HYPERVISOR - PER_ACCOUNT)
            .map(|n| slots.take(&format!("acc-x{n}"), "hv1").unwrap())
            .collect();
        assert_eq!(slots.take("acc-2", "hv1").unwrap_err(), Full::Hypervisor);
        assert!(slots.take("acc-2", "hv2").is_ok(), "another hypervisor");
        drop(mine);
        assert!(slots.take("acc-1", "hv2").is_ok());
        drop(others);
        let counts = slots.counts.lock().unwrap();
        assert!(counts.accounts.is_empty() && counts.hypervisors.is_empty());
    }
}
