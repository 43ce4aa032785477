//! [`Interrupt`]: a flag that makes a start's waits give up — reaching the Kafka brokers,
//! waiting out another node's writer lease, reading and replaying the log — with
//! [`WalError::Interrupted`]. A node asked to stop while it recovers sets it and so stops
//! within a poll (a few hundred milliseconds) instead of at the end of the wait.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::WalError;

/// Shared by its clones; set once, never cleared. Not configuration: any two compare equal
/// (a [`KafkaConfig`](crate::kafka::KafkaConfig) carries one).
#[derive(Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Sets the flag: every wait watching it returns [`WalError::Interrupted`] soon.
    pub fn interrupt(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the flag is set.
    pub fn is_interrupted(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// [`WalError::Interrupted`] once the flag is set.
    pub fn check(&self) -> Result<(), WalError> {
        if self.is_interrupted() {
            Err(WalError::Interrupted)
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Interrupt")
            .field(&self.is_interrupted())
            .finish()
    }
}

impl PartialEq for Interrupt {
    fn eq(&self, _: &Interrupt) -> bool {
        true
    }
}

impl Eq for Interrupt {}
