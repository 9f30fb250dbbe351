//! Remembering who to wake.

use std::task::Waker;

/// Stores `waker` in `slot` unless the one there already wakes the same task (the common
/// case when a task polls the same thing again); returns whether it changed.
pub(crate) fn remember(slot: &mut Option<Waker>, waker: &Waker) -> bool {
    if slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
        return false;
    }
    *slot = Some(waker.clone());
    true
}
