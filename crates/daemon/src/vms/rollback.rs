/// Undoes one step.
type Undo = Box<dyn FnOnce() + Send>;

/// Undo actions for the steps done so far; run in reverse on failure.
#[derive(Default)]
pub(super) struct Rollback {
    steps: Vec<(&'static str, Undo)>,
}

impl std::fmt::Debug for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.steps.iter().map(|(n, _)| *n).collect();
        f.debug_struct("Rollback").field("steps", &names).finish()
    }
}

impl Rollback {
    pub(super) fn push(&mut self, step: &'static str, undo: impl FnOnce() + Send + 'static) {
        self.steps.push((step, Box::new(undo)));
    }

    /// Undoes every recorded step, last first.
    pub(super) fn run(self) {
        for (step, undo) in self.steps.into_iter().rev() {
            tracing::info!(step, "rolling back");
            undo();
        }
    }

    /// Keeps everything: the steps succeeded.
    pub(super) fn disarm(mut self) {
        self.steps.clear();
    }
}
