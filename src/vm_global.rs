//! State for the whole VM, in a `static`: what `thread_local!` gave before the module became
//! `no_std`.

use core::cell::{OnceCell, RefCell};

// proxy-wasm runs each VM on one thread and this module is built without wasm threads; a
// build with them would make `VmGlobal` unsound, so it is refused.
#[cfg(target_feature = "atomics")]
compile_error!("keygate's filter assumes a single-threaded wasm VM (no `atomics`)");

/// A lazily built value with checked borrows, shared by every context of the VM.
pub struct VmGlobal<T> {
    cell: OnceCell<RefCell<T>>,
    init: fn() -> T,
}

// SAFETY: the module has one thread (see the `atomics` check above), so the value is never
// reached from two threads.
unsafe impl<T> Sync for VmGlobal<T> {}

impl<T> VmGlobal<T> {
    pub const fn new(init: fn() -> T) -> Self {
        VmGlobal {
            cell: OnceCell::new(),
            init,
        }
    }

    fn get(&self) -> &RefCell<T> {
        if let Some(cell) = self.cell.get() {
            return cell;
        }
        // Built before it is stored: `init` may use other globals (never its own).
        if let Err(built) = self.cell.set(RefCell::new((self.init)())) {
            // Only a reentrant `init` could have stored one first: that one stays, and this
            // one is not dropped, because `get_or_init`'s code to drop it cost the module
            // about 400 bytes a global (measured with twiggy).
            core::mem::forget(built);
        }
        match self.cell.get() {
            Some(cell) => cell,
            None => unreachable!("a value was just stored"),
        }
    }

    pub fn with_borrow<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.get().borrow())
    }

    pub fn with_borrow_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.get().borrow_mut())
    }
}
