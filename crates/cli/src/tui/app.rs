//! The TUI's state, and what keys and the daemon's news do to it. Nothing
//! here touches the terminal, a socket or a thread, so every transition
//! is a unit test: the runner (`tui/mod.rs`) turns the [`Effect`]s these
//! functions return into daemon calls on worker threads and feeds their
//! answers back as [`Msg`]s.

use std::collections::{HashMap, VecDeque};

use banger_proto::events::{Event, EventKind};
use banger_proto::snapshot::SnapshotView;
use banger_proto::vm::{ImageView, KernelView, OpView, VmCreateParams, VmStats, VmView};
use banger_proto::{ObjectAction, ObjectKind, OpKind, OpState, VmState};
use ratatui::crossterm::event::{KeyCode, KeyEvent};

use super::keys::{self, Command};

/// The panes Tab moves between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pane {
    Vms,
    Artifacts,
    Ops,
}

/// The tabs of the middle pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tab {
    Images,
    Kernels,
    Snapshots,
}

impl Tab {
    pub(crate) const ALL: [Tab; 3] = [Tab::Images, Tab::Kernels, Tab::Snapshots];

    pub(crate) fn title(self) -> &'static str {
        match self {
            Tab::Images => "Images",
            Tab::Kernels => "Kernels",
            Tab::Snapshots => "Snapshots",
        }
    }
}

/// A list the daemon keeps, read again as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ListKind {
    Vms,
    Images,
    Kernels,
    Snapshots,
    Ops,
}

impl ListKind {
    pub(crate) const ALL: [ListKind; 5] = [
        ListKind::Vms,
        ListKind::Images,
        ListKind::Kernels,
        ListKind::Snapshots,
        ListKind::Ops,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// A daemon call the user asked for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    Start(String),
    Stop(String),
    Restart(String),
    Pause(String),
    Resume(String),
    Delete {
        name: String,
        force: bool,
    },
    Snapshot(String),
    Fork {
        name: String,
        new_name: String,
    },
    Create(VmCreateParams),
    /// Cancel an operation; `label` is its kind and target.
    CancelOp {
        op_id: String,
        label: String,
    },
}

impl Action {
    /// `start dev`, for the status line.
    pub(crate) fn describe(&self) -> String {
        match self {
            Action::Start(n) => format!("start {n}"),
            Action::Stop(n) => format!("stop {n}"),
            Action::Restart(n) => format!("restart {n}"),
            Action::Pause(n) => format!("pause {n}"),
            Action::Resume(n) => format!("resume {n}"),
            Action::Delete { name, .. } => format!("delete {name}"),
            Action::Snapshot(n) => format!("snapshot {n}"),
            Action::Fork { name, new_name } => format!("fork {name} as {new_name}"),
            Action::Create(p) => format!("create {}", p.name),
            Action::CancelOp { op_id, label } => format!("cancel {label} ({op_id})"),
        }
    }
}

/// What the runner should do after a key or a message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Read a list again (on a worker thread).
    Fetch(ListKind),
    /// Make a daemon call (on a worker thread).
    Call(Action),
    /// Step aside and run `banger vm ssh NAME` on the terminal.
    Ssh(String),
    /// Tail this console log, its lines tagged with `generation`.
    FollowLog {
        path: String,
        generation: u64,
    },
    /// Stop tailing.
    StopLog,
    Quit,
}

/// News for the UI loop: from the event stream, a fetch, a call, the
/// stats poller or a log tail.
#[derive(Debug)]
pub(crate) enum Msg {
    /// (Re)subscribed; `complete` false when events may have been missed
    /// (always on the first subscription): every list is read again.
    Subscribed {
        complete: bool,
    },
    Event(Box<Event>),
    /// The stream ended (why); the feed resubscribes.
    StreamEnded(String),
    Vms(Result<Vec<VmView>, String>),
    Images(Result<Vec<ImageView>, String>),
    Kernels(Result<Vec<KernelView>, String>),
    Snapshots(Result<Vec<SnapshotView>, String>),
    Ops(Result<Vec<OpView>, String>),
    Stats(Box<VmStats>),
    /// A call ended: the operation it began, if it began one, or why it
    /// failed.
    ActionDone {
        action: Box<Action>,
        outcome: Result<Option<String>, String>,
    },
    LogLines {
        generation: u64,
        lines: Vec<String>,
    },
}

/// An operation as the ops pane shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpRow {
    pub op_id: String,
    pub kind: OpKind,
    pub target: String,
    pub state: OpState,
    /// Each stage's name and depth, in order; the last is the current one
    /// while the operation runs.
    pub stages: Vec<(String, u32)>,
    pub error: Option<String>,
    pub started_at_ms: i64,
}

impl From<OpView> for OpRow {
    fn from(op: OpView) -> Self {
        Self {
            op_id: op.op_id,
            kind: op.kind,
            target: op.target,
            state: op.state,
            stages: op.stages.into_iter().map(|s| (s.name, s.depth)).collect(),
            error: op.error.map(|e| e.message),
            started_at_ms: op.started_at_ms,
        }
    }
}

/// The fields of the create form, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Image,
    Name,
    Vcpus,
    Memory,
}

impl Field {
    pub(crate) const ALL: [Field; 4] = [Field::Image, Field::Name, Field::Vcpus, Field::Memory];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Field::Image => "image",
            Field::Name => "name",
            Field::Vcpus => "vCPUs",
            Field::Memory => "memory",
        }
    }
}

/// `banger vm create` as a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CreateForm {
    /// The images to choose from; `None` (the first choice) is the
    /// daemon's default.
    pub images: Vec<String>,
    pub image: Option<usize>,
    pub name: String,
    pub vcpus: String,
    pub memory: String,
    pub field: Field,
}

impl CreateForm {
    fn new(images: Vec<String>) -> Self {
        Self {
            images,
            image: None,
            name: String::new(),
            vcpus: String::new(),
            memory: String::new(),
            field: Field::Name,
        }
    }

    pub(crate) fn image_label(&self) -> String {
        match self.image.and_then(|i| self.images.get(i)) {
            Some(name) => name.clone(),
            None => "(default)".into(),
        }
    }

    fn move_field(&mut self, forward: bool) {
        let i = Field::ALL
            .iter()
            .position(|f| *f == self.field)
            .unwrap_or(0);
        let n = Field::ALL.len();
        self.field = Field::ALL[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }];
    }

    fn cycle_image(&mut self, forward: bool) {
        // Choices: None, then each image.
        let choices = self.images.len() + 1;
        let at = self.image.map_or(0, |i| i + 1);
        let next = if forward {
            (at + 1) % choices
        } else {
            (at + choices - 1) % choices
        };
        self.image = next.checked_sub(1);
    }

    fn text_mut(&mut self) -> Option<&mut String> {
        match self.field {
            Field::Image => None,
            Field::Name => Some(&mut self.name),
            Field::Vcpus => Some(&mut self.vcpus),
            Field::Memory => Some(&mut self.memory),
        }
    }

    /// The create's params, or what is wrong with the form.
    pub(crate) fn params(&self) -> Result<VmCreateParams, String> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err("the VM needs a name".into());
        }
        let vcpus = match self.vcpus.trim() {
            "" => None,
            v => Some(
                v.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("vCPUs {v:?}: use a whole number"))?,
            ),
        };
        let memory_mib = match self.memory.trim() {
            "" => None,
            m => Some(crate::commands::format::mib("memory", m).map_err(|e| e.display_chain())?),
        };
        Ok(VmCreateParams {
            name: name.to_owned(),
            image: self.image.and_then(|i| self.images.get(i)).cloned(),
            vcpus,
            memory_mib,
            start: Some(true),
            ..VmCreateParams::default()
        })
    }
}

/// What a console log view holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogView {
    pub vm: String,
    pub generation: u64,
    /// The last lines, as read (escaped when drawn).
    pub lines: VecDeque<String>,
}

/// How many console lines a log view keeps.
const LOG_LINES: usize = 2000;
/// How many operations the ops pane keeps (newest first).
const MAX_OPS: usize = 200;

/// A window over the main view, taking the keys while open.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Modal {
    Help,
    Confirm { question: String, action: Action },
    ForkName { vm: String, input: String },
    Create(CreateForm),
    Log(LogView),
}

/// The whole state of the TUI.
#[derive(Debug)]
pub(crate) struct App {
    pub vms: Vec<VmView>,
    pub images: Vec<ImageView>,
    pub kernels: Vec<KernelView>,
    pub snapshots: Vec<SnapshotView>,
    /// Newest first.
    pub ops: Vec<OpRow>,
    pub stats: HashMap<String, VmStats>,
    pub focus: Pane,
    pub tab: Tab,
    pub vm_selected: usize,
    pub artifact_selected: usize,
    /// The operation whose stages show (by id: the list moves under it).
    pub op_selected: Option<String>,
    pub modal: Option<Modal>,
    /// One line: what the last action did, or why it failed.
    pub status: Option<(String, bool)>,
    /// The event stream is up.
    pub live: bool,
    /// Fetches running, and lists to read again once they end (an event
    /// arrived meanwhile): one fetch per list at a time.
    fetching: [bool; 5],
    refetch: [bool; 5],
    /// Counts log views, so lines of a closed one are told apart.
    log_generation: u64,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    pub(crate) fn new() -> Self {
        Self {
            vms: Vec::new(),
            images: Vec::new(),
            kernels: Vec::new(),
            snapshots: Vec::new(),
            ops: Vec::new(),
            stats: HashMap::new(),
            focus: Pane::Vms,
            tab: Tab::Images,
            vm_selected: 0,
            artifact_selected: 0,
            op_selected: None,
            modal: None,
            status: None,
            live: false,
            fetching: [false; 5],
            refetch: [false; 5],
            log_generation: 0,
        }
    }

    pub(crate) fn selected_vm(&self) -> Option<&VmView> {
        self.vms.get(self.vm_selected)
    }

    pub(crate) fn selected_op(&self) -> Option<&OpRow> {
        let id = self.op_selected.as_deref()?;
        self.ops.iter().find(|o| o.op_id == id)
    }

    /// Names of the running VMs (whose stats are worth asking for).
    pub(crate) fn running_vm_names(&self) -> Vec<String> {
        self.vms
            .iter()
            .filter(|v| v.state == VmState::Running)
            .map(|v| v.name.clone())
            .collect()
    }

    /// How many rows the middle pane's current tab lists.
    pub(crate) fn artifact_count(&self) -> usize {
        match self.tab {
            Tab::Images => self.images.len(),
            Tab::Kernels => self.kernels.len(),
            Tab::Snapshots => self.snapshots.len(),
        }
    }

    fn error(&mut self, text: impl Into<String>) {
        self.status = Some((text.into(), true));
    }

    fn note(&mut self, text: impl Into<String>) {
        self.status = Some((text.into(), false));
    }

    /// A fetch of `kind`, unless one runs already (then it runs again
    /// when that one ends).
    fn fetch(&mut self, kind: ListKind) -> Option<Effect> {
        let i = kind.index();
        if self.fetching[i] {
            self.refetch[i] = true;
            None
        } else {
            self.fetching[i] = true;
            Some(Effect::Fetch(kind))
        }
    }

    /// A fetch of `kind` ended: the one queued meanwhile, if any.
    fn fetched(&mut self, kind: ListKind) -> Option<Effect> {
        let i = kind.index();
        self.fetching[i] = false;
        if std::mem::take(&mut self.refetch[i]) {
            self.fetch(kind)
        } else {
            None
        }
    }

    /// Applies news from the daemon or a worker.
    pub(crate) fn apply(&mut self, msg: Msg) -> Vec<Effect> {
        let mut effects = Vec::new();
        match msg {
            Msg::Subscribed { complete } => {
                self.live = true;
                if !complete {
                    effects.extend(ListKind::ALL.iter().filter_map(|k| self.fetch(*k)));
                }
            }
            Msg::StreamEnded(why) => {
                if self.live {
                    self.error(format!("event stream ended ({why}); reconnecting"));
                }
                self.live = false;
            }
            Msg::Event(event) => effects.extend(self.on_event(*event)),
            Msg::Vms(list) => {
                if let Ok(vms) = self.list_result("VMs", list) {
                    self.vms = vms;
                    let names: Vec<&str> = self.vms.iter().map(|v| v.name.as_str()).collect();
                    self.stats.retain(|n, _| names.contains(&n.as_str()));
                    self.vm_selected = self.vm_selected.min(self.vms.len().saturating_sub(1));
                }
                effects.extend(self.fetched(ListKind::Vms));
            }
            Msg::Images(list) => {
                if let Ok(l) = self.list_result("images", list) {
                    self.images = l;
                }
                self.clamp_artifacts();
                effects.extend(self.fetched(ListKind::Images));
            }
            Msg::Kernels(list) => {
                if let Ok(l) = self.list_result("kernels", list) {
                    self.kernels = l;
                }
                self.clamp_artifacts();
                effects.extend(self.fetched(ListKind::Kernels));
            }
            Msg::Snapshots(list) => {
                if let Ok(l) = self.list_result("snapshots", list) {
                    self.snapshots = l;
                }
                self.clamp_artifacts();
                effects.extend(self.fetched(ListKind::Snapshots));
            }
            Msg::Ops(list) => {
                if let Ok(mut ops) = self.list_result("operations", list) {
                    ops.sort_by_key(|o| std::cmp::Reverse(o.started_at_ms));
                    ops.truncate(MAX_OPS);
                    self.ops = ops.into_iter().map(OpRow::from).collect();
                    if self.selected_op().is_none() {
                        self.op_selected = self.ops.first().map(|o| o.op_id.clone());
                    }
                }
                effects.extend(self.fetched(ListKind::Ops));
            }
            Msg::Stats(stats) => {
                let running = self
                    .vms
                    .iter()
                    .any(|v| v.name == stats.name && v.state == VmState::Running);
                if running {
                    self.stats.insert(stats.name.clone(), *stats);
                }
            }
            Msg::ActionDone { action, outcome } => match outcome {
                Ok(op) => {
                    let what = action.describe();
                    match op {
                        Some(op_id) => {
                            self.note(format!("{what}: {op_id} running"));
                            if matches!(*action, Action::Create(_) | Action::Fork { .. }) {
                                // Show its stages as they come.
                                self.op_selected = Some(op_id);
                                self.focus = Pane::Ops;
                            }
                        }
                        None => self.note(format!("{what}: done")),
                    }
                }
                Err(e) => self.error(format!("{}: {e}", action.describe())),
            },
            Msg::LogLines { generation, lines } => {
                if let Some(Modal::Log(log)) = &mut self.modal {
                    if log.generation == generation {
                        log.lines.extend(lines);
                        while log.lines.len() > LOG_LINES {
                            log.lines.pop_front();
                        }
                    }
                }
            }
        }
        effects
    }

    fn list_result<T>(&mut self, what: &str, list: Result<T, String>) -> Result<T, ()> {
        list.map_err(|e| self.error(format!("reading {what}: {e}")))
    }

    fn clamp_artifacts(&mut self) {
        self.artifact_selected = self
            .artifact_selected
            .min(self.artifact_count().saturating_sub(1));
    }

    fn on_event(&mut self, event: Event) -> Vec<Effect> {
        let mut effects = Vec::new();
        match event.kind {
            EventKind::Object(change) => {
                let kind = match change.object {
                    ObjectKind::Vm => {
                        // The state at once; the rest when the list is read.
                        match change.action {
                            ObjectAction::Deleted => {
                                self.vms.retain(|v| v.id != change.id);
                                self.stats.remove(&change.name);
                                self.vm_selected =
                                    self.vm_selected.min(self.vms.len().saturating_sub(1));
                            }
                            _ => {
                                if let (Some(state), Some(vm)) = (
                                    change.vm_state,
                                    self.vms.iter_mut().find(|v| v.id == change.id),
                                ) {
                                    vm.state = state;
                                    if state != VmState::Running {
                                        self.stats.remove(&change.name);
                                    }
                                }
                            }
                        }
                        ListKind::Vms
                    }
                    ObjectKind::Image => ListKind::Images,
                    ObjectKind::Kernel => ListKind::Kernels,
                    ObjectKind::Snapshot => ListKind::Snapshots,
                };
                effects.extend(self.fetch(kind));
            }
            EventKind::OpStarted {
                op_id,
                kind,
                target,
            } => {
                if !self.ops.iter().any(|o| o.op_id == op_id) {
                    self.ops.insert(
                        0,
                        OpRow {
                            op_id: op_id.clone(),
                            kind,
                            target,
                            state: OpState::Running,
                            stages: Vec::new(),
                            error: None,
                            started_at_ms: event.at_ms,
                        },
                    );
                    self.ops.truncate(MAX_OPS);
                }
                if self.op_selected.is_none() {
                    self.op_selected = Some(op_id);
                }
            }
            EventKind::OpStage {
                op_id,
                stage,
                depth,
            } => match self.ops.iter_mut().find(|o| o.op_id == op_id) {
                Some(op) => op.stages.push((stage, depth)),
                // Started before we listened: the list has it.
                None => effects.extend(self.fetch(ListKind::Ops)),
            },
            EventKind::OpEnded {
                op_id,
                state,
                error,
            } => match self.ops.iter_mut().find(|o| o.op_id == op_id) {
                Some(op) => {
                    op.state = state;
                    op.error = error.map(|e| e.message);
                    // The status line said it was running: say how it ended.
                    let said_running = self
                        .status
                        .as_ref()
                        .is_some_and(|(text, _)| text.contains(&op_id));
                    if said_running {
                        let end = format!("{} {}: {state}", op.kind, op.target);
                        match &op.error {
                            Some(e) => self.status = Some((format!("{end}: {e}"), true)),
                            None => self.status = Some((end, false)),
                        }
                    }
                }
                None => effects.extend(self.fetch(ListKind::Ops)),
            },
        }
        effects
    }

    /// Applies a key press.
    pub(crate) fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if keys::is_interrupt(key) {
            return vec![Effect::Quit];
        }
        match self.modal.take() {
            None => self.on_main_key(key),
            Some(modal) => self.on_modal_key(modal, key),
        }
    }

    fn on_modal_key(&mut self, modal: Modal, key: KeyEvent) -> Vec<Effect> {
        match modal {
            // Any key closes the help.
            Modal::Help => {}
            Modal::Confirm { question, action } => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.note(format!("{}...", action.describe()));
                    return vec![Effect::Call(action)];
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {
                    self.note("cancelled");
                }
                _ => self.modal = Some(Modal::Confirm { question, action }),
            },
            Modal::ForkName { vm, mut input } => match key.code {
                KeyCode::Esc => self.note("cancelled"),
                KeyCode::Enter if !input.trim().is_empty() => {
                    let action = Action::Fork {
                        name: vm,
                        new_name: input.trim().to_owned(),
                    };
                    self.note(format!("{}...", action.describe()));
                    return vec![Effect::Call(action)];
                }
                code => {
                    edit_text(&mut input, code);
                    self.modal = Some(Modal::ForkName { vm, input });
                }
            },
            Modal::Create(mut form) => match key.code {
                KeyCode::Esc => self.note("cancelled"),
                KeyCode::Enter => match form.params() {
                    Ok(params) => {
                        let action = Action::Create(params);
                        self.note(format!("{}...", action.describe()));
                        return vec![Effect::Call(action)];
                    }
                    Err(e) => {
                        self.error(e);
                        self.modal = Some(Modal::Create(form));
                    }
                },
                code => {
                    match code {
                        KeyCode::Tab | KeyCode::Down => form.move_field(true),
                        KeyCode::BackTab | KeyCode::Up => form.move_field(false),
                        KeyCode::Left if form.field == Field::Image => form.cycle_image(false),
                        KeyCode::Right | KeyCode::Char(' ') if form.field == Field::Image => {
                            form.cycle_image(true)
                        }
                        code => {
                            if let Some(text) = form.text_mut() {
                                edit_text(text, code);
                            }
                        }
                    }
                    self.modal = Some(Modal::Create(form));
                }
            },
            Modal::Log(log) => match key.code {
                KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('l') => {
                    return vec![Effect::StopLog];
                }
                _ => self.modal = Some(Modal::Log(log)),
            },
        }
        Vec::new()
    }

    fn on_main_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let Some(command) = keys::command(key) else {
            return Vec::new();
        };
        match command {
            Command::Quit => return vec![Effect::Quit],
            Command::Help => self.modal = Some(Modal::Help),
            Command::NextPane | Command::PreviousPane => {
                let panes = [Pane::Vms, Pane::Artifacts, Pane::Ops];
                let i = panes.iter().position(|p| *p == self.focus).unwrap_or(0);
                let step = if command == Command::NextPane { 1 } else { 2 };
                self.focus = panes[(i + step) % panes.len()];
            }
            Command::Up | Command::Down => self.move_selection(command == Command::Down),
            Command::PreviousTab | Command::NextTab => {
                let i = Tab::ALL.iter().position(|t| *t == self.tab).unwrap_or(0);
                let step = if command == Command::NextTab { 1 } else { 2 };
                self.tab = Tab::ALL[(i + step) % Tab::ALL.len()];
                self.artifact_selected = 0;
                self.focus = Pane::Artifacts;
            }
            Command::Create => {
                let images = self.images.iter().map(|i| i.name.clone()).collect();
                self.modal = Some(Modal::Create(CreateForm::new(images)));
            }
            Command::CancelOp => self.ask_cancel_op(),
            vm_command => return self.on_vm_command(vm_command),
        }
        Vec::new()
    }

    fn move_selection(&mut self, down: bool) {
        let step = |at: usize, len: usize| {
            if down {
                (at + 1).min(len.saturating_sub(1))
            } else {
                at.saturating_sub(1)
            }
        };
        match self.focus {
            Pane::Vms => self.vm_selected = step(self.vm_selected, self.vms.len()),
            Pane::Artifacts => {
                self.artifact_selected = step(self.artifact_selected, self.artifact_count());
            }
            Pane::Ops => {
                let at = self
                    .op_selected
                    .as_deref()
                    .and_then(|id| self.ops.iter().position(|o| o.op_id == id))
                    .unwrap_or(0);
                let next = step(at, self.ops.len());
                self.op_selected = self.ops.get(next).map(|o| o.op_id.clone());
            }
        }
    }

    /// Asks before cancelling the selected operation (the ops pane's
    /// selection), which rolls its work back.
    fn ask_cancel_op(&mut self) {
        let Some(op) = self.selected_op() else {
            self.error("no operation selected (Tab to the operations pane, then ↑ ↓)");
            return;
        };
        if op.state != OpState::Running {
            let text = format!("{} {} has ended ({})", op.kind, op.target, op.state);
            self.error(text);
            return;
        }
        let label = format!("{} {}", op.kind, op.target);
        self.modal = Some(Modal::Confirm {
            question: format!(
                "cancel {label} ({})? its work is rolled back (y/n)",
                op.op_id
            ),
            action: Action::CancelOp {
                op_id: op.op_id.clone(),
                label,
            },
        });
    }

    /// A command on the selected VM.
    fn on_vm_command(&mut self, command: Command) -> Vec<Effect> {
        let Some(vm) = self.selected_vm() else {
            self.error("no VM selected");
            return Vec::new();
        };
        let name = vm.name.clone();
        let state = vm.state;
        let console_log = vm.console_log.clone();
        let call = |action| vec![Effect::Call(action)];
        let effects = match command {
            Command::Start => call(Action::Start(name)),
            Command::Stop => call(Action::Stop(name)),
            Command::Restart => call(Action::Restart(name)),
            Command::PauseResume if state == VmState::Paused => call(Action::Resume(name)),
            Command::PauseResume => call(Action::Pause(name)),
            Command::Snapshot => call(Action::Snapshot(name)),
            Command::Delete => {
                let force = matches!(state, VmState::Running | VmState::Paused);
                let question = if force {
                    format!("delete VM {name}? it is {state}: it will be killed (y/n)")
                } else {
                    format!("delete VM {name}? (y/n)")
                };
                self.modal = Some(Modal::Confirm {
                    question,
                    action: Action::Delete { name, force },
                });
                return Vec::new();
            }
            Command::Fork => {
                self.modal = Some(Modal::ForkName {
                    vm: name,
                    input: String::new(),
                });
                return Vec::new();
            }
            Command::Logs => {
                self.log_generation += 1;
                let path = console_log;
                self.modal = Some(Modal::Log(LogView {
                    vm: name,
                    generation: self.log_generation,
                    lines: VecDeque::new(),
                }));
                return vec![Effect::FollowLog {
                    path,
                    generation: self.log_generation,
                }];
            }
            Command::Ssh => {
                if state != VmState::Running {
                    self.error(format!("ssh {name}: it is {state}, not running"));
                    return Vec::new();
                }
                return vec![Effect::Ssh(name)];
            }
            _ => return Vec::new(),
        };
        if let [Effect::Call(action)] = effects.as_slice() {
            self.note(format!("{}...", action.describe()));
        }
        effects
    }
}

/// Typing into a one-line text field: printable characters, Backspace.
fn edit_text(text: &mut String, code: KeyCode) {
    match code {
        KeyCode::Backspace => {
            text.pop();
        }
        KeyCode::Char(c) if !c.is_control() && text.chars().count() < 64 => text.push(c),
        _ => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use banger_proto::events::ObjectChange;
    use banger_proto::vm::StageView;
    use banger_proto::{Egress, NetworkMode, WaitFor};
    use ratatui::crossterm::event::KeyModifiers;

    pub(crate) fn vm(name: &str, state: VmState) -> VmView {
        VmView {
            id: format!("id-{name}"),
            name: name.into(),
            state,
            image: "default".into(),
            kernel: "debian-cloud".into(),
            vcpus: 2,
            memory_mib: 1024,
            disk_size_bytes: 8 << 30,
            network: NetworkMode::User,
            egress: Egress::default(),
            wait_for: WaitFor::Agent,
            backend: None,
            backend_reason: None,
            accel: None,
            disk_strategy: None,
            publish: Vec::new(),
            last_error: None,
            pid: None,
            ssh_port: Some(2222),
            ip: None,
            tap: None,
            vm_dir: "/tmp/vm".into(),
            console_log: "/tmp/vm/console.log".into(),
            created_at_ms: 0,
            agent: false,
            agent_shell: false,
            services: Vec::new(),
        }
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn code(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn event(seq: u64, kind: EventKind) -> Msg {
        Msg::Event(Box::new(Event {
            seq,
            at_ms: 1000 + seq as i64,
            kind,
        }))
    }

    fn app_with(vms: Vec<VmView>) -> App {
        let mut app = App::new();
        app.apply(Msg::Vms(Ok(vms)));
        app
    }

    #[test]
    fn a_first_subscription_reads_every_list_once() {
        let mut app = App::new();
        let effects = app.apply(Msg::Subscribed { complete: false });
        assert_eq!(
            effects,
            ListKind::ALL.map(Effect::Fetch).to_vec(),
            "each list once"
        );
        assert!(app.live);
        // While those run, another incomplete resubscription queues one more each.
        assert!(app.apply(Msg::Subscribed { complete: false }).is_empty());
        assert_eq!(
            app.apply(Msg::Vms(Ok(vec![]))),
            vec![Effect::Fetch(ListKind::Vms)]
        );
        assert!(app.apply(Msg::Vms(Ok(vec![]))).is_empty());
        // A complete resubscription missed nothing.
        assert!(app.apply(Msg::Subscribed { complete: true }).is_empty());
    }

    #[test]
    fn object_events_update_a_vm_state_at_once_and_read_the_list_again() {
        let mut app = app_with(vec![vm("dev", VmState::Running)]);
        let effects = app.apply(event(
            5,
            EventKind::Object(ObjectChange {
                object: ObjectKind::Vm,
                action: ObjectAction::Updated,
                id: "id-dev".into(),
                name: "dev".into(),
                vm_state: Some(VmState::Stopped),
            }),
        ));
        assert_eq!(app.vms[0].state, VmState::Stopped);
        assert_eq!(effects, vec![Effect::Fetch(ListKind::Vms)]);
        let effects = app.apply(event(
            6,
            EventKind::Object(ObjectChange {
                object: ObjectKind::Image,
                action: ObjectAction::Created,
                id: "i".into(),
                name: "img".into(),
                vm_state: None,
            }),
        ));
        assert_eq!(effects, vec![Effect::Fetch(ListKind::Images)]);
        app.apply(event(
            7,
            EventKind::Object(ObjectChange {
                object: ObjectKind::Vm,
                action: ObjectAction::Deleted,
                id: "id-dev".into(),
                name: "dev".into(),
                vm_state: None,
            }),
        ));
        assert!(app.vms.is_empty());
    }

    #[test]
    fn op_events_show_stages_live() {
        let mut app = App::new();
        app.apply(event(
            1,
            EventKind::OpStarted {
                op_id: "op-1".into(),
                kind: OpKind::VmCreate,
                target: "dev".into(),
            },
        ));
        for stage in ["prepare disks", "launch vmm", "wait for agent"] {
            app.apply(event(
                2,
                EventKind::OpStage {
                    op_id: "op-1".into(),
                    stage: stage.into(),
                    depth: 0,
                },
            ));
        }
        let op = app.selected_op().unwrap();
        assert_eq!(op.state, OpState::Running);
        assert_eq!(op.stages.last().unwrap().0, "wait for agent");
        app.apply(event(
            3,
            EventKind::OpEnded {
                op_id: "op-1".into(),
                state: OpState::Failed,
                error: Some(banger_proto::ErrorBody {
                    code: banger_proto::ErrorCode::OperationFailed,
                    message: "guest said \x1b[2J".into(),
                    op_id: None,
                }),
            },
        ));
        assert_eq!(app.ops[0].state, OpState::Failed);
        assert_eq!(app.ops[0].error.as_deref(), Some("guest said \x1b[2J"));
        // A stage of an operation we never saw: read the list.
        let effects = app.apply(event(
            4,
            EventKind::OpStage {
                op_id: "op-2".into(),
                stage: "x".into(),
                depth: 0,
            },
        ));
        assert_eq!(effects, vec![Effect::Fetch(ListKind::Ops)]);
        // The list replaces what the events built.
        app.apply(Msg::Ops(Ok(vec![OpView {
            op_id: "op-2".into(),
            kind: OpKind::VmStart,
            target: "dev".into(),
            state: OpState::Running,
            stages: vec![StageView {
                name: "x".into(),
                duration_ms: None,
                depth: 0,
                progress: None,
            }],
            error: None,
            result: None,
            started_at_ms: 0,
            ended_at_ms: None,
        }])));
        assert_eq!(app.ops.len(), 1);
        assert_eq!(app.selected_op().unwrap().op_id, "op-2");
    }

    #[test]
    fn vm_keys_call_the_daemon_on_the_selected_vm() {
        let mut app = app_with(vec![vm("a", VmState::Stopped), vm("b", VmState::Paused)]);
        assert_eq!(
            app.on_key(key('s')),
            vec![Effect::Call(Action::Start("a".into()))]
        );
        app.on_key(code(KeyCode::Down));
        assert_eq!(
            app.on_key(key('p')),
            vec![Effect::Call(Action::Resume("b".into()))]
        );
        assert_eq!(
            app.on_key(key('t')),
            vec![Effect::Call(Action::Stop("b".into()))]
        );
        assert_eq!(app.on_key(code(KeyCode::Enter)), vec![]);
        assert!(
            app.status.as_ref().unwrap().1,
            "ssh to a paused VM: an error"
        );
        assert_eq!(app.on_key(key('q')), vec![Effect::Quit]);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(app.on_key(ctrl_c), vec![Effect::Quit]);
    }

    #[test]
    fn x_cancels_the_selected_running_operation_after_asking() {
        let mut app = app_with(vec![vm("dev", VmState::Creating)]);
        assert!(app.on_key(key('x')).is_empty(), "nothing selected");
        assert!(app.status.as_ref().unwrap().1, "an error");
        let op = |state| OpView {
            op_id: "op-7".into(),
            kind: OpKind::VmCreate,
            target: "dev".into(),
            state,
            stages: Vec::new(),
            error: None,
            result: None,
            started_at_ms: 0,
            ended_at_ms: None,
        };
        app.apply(Msg::Ops(Ok(vec![op(OpState::Running)])));
        app.op_selected = Some("op-7".into());
        assert!(app.on_key(key('x')).is_empty());
        let Some(Modal::Confirm { question, .. }) = &app.modal else {
            panic!("{:?}", app.modal);
        };
        assert!(
            question.starts_with("cancel vm.create dev (op-7)?"),
            "{question}"
        );
        assert!(app.on_key(key('n')).is_empty(), "n keeps it");
        app.on_key(key('x'));
        assert_eq!(
            app.on_key(key('y')),
            vec![Effect::Call(Action::CancelOp {
                op_id: "op-7".into(),
                label: "vm.create dev".into(),
            })]
        );
        // An operation that has ended is not asked about.
        app.apply(Msg::Ops(Ok(vec![op(OpState::Succeeded)])));
        assert!(app.on_key(key('x')).is_empty());
        assert!(app.modal.is_none());
        assert!(app.status.as_ref().unwrap().0.contains("has ended"));
    }

    #[test]
    fn delete_asks_first() {
        let mut app = app_with(vec![vm("dev", VmState::Running)]);
        assert!(app.on_key(key('d')).is_empty());
        let Some(Modal::Confirm { question, .. }) = &app.modal else {
            panic!("{:?}", app.modal);
        };
        assert!(question.contains("killed"), "{question}");
        // Other keys leave the question open; n closes it, doing nothing.
        assert!(app.on_key(key('x')).is_empty());
        assert!(app.modal.is_some());
        assert!(app.on_key(key('n')).is_empty());
        assert!(app.modal.is_none());
        app.on_key(key('d'));
        assert_eq!(
            app.on_key(key('y')),
            vec![Effect::Call(Action::Delete {
                name: "dev".into(),
                force: true
            })]
        );
        assert!(app.modal.is_none());
        // Even Ctrl-C in a question quits.
        app.on_key(key('d'));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(app.on_key(ctrl_c), vec![Effect::Quit]);
    }

    #[test]
    fn fork_asks_for_a_name() {
        let mut app = app_with(vec![vm("dev", VmState::Running)]);
        app.on_key(key('f'));
        assert!(app.on_key(code(KeyCode::Enter)).is_empty(), "no name yet");
        for c in "cl0ne".chars() {
            app.on_key(key(c));
        }
        app.on_key(code(KeyCode::Backspace));
        app.on_key(key('e'));
        assert_eq!(
            app.on_key(code(KeyCode::Enter)),
            vec![Effect::Call(Action::Fork {
                name: "dev".into(),
                new_name: "cl0ne".into()
            })]
        );
    }

    #[test]
    fn the_create_form_makes_params_and_follows_the_op() {
        let mut app = App::new();
        app.images = vec![];
        app.on_key(key('c'));
        let Some(Modal::Create(form)) = &mut app.modal else {
            panic!()
        };
        form.images = vec!["default".into(), "tiny".into()];
        assert_eq!(app.on_key(code(KeyCode::Enter)), vec![], "no name");
        assert!(app.status.as_ref().unwrap().1);
        for c in "web".chars() {
            app.on_key(key(c));
        }
        app.on_key(code(KeyCode::Up)); // image
        app.on_key(code(KeyCode::Right));
        app.on_key(code(KeyCode::Right));
        app.on_key(code(KeyCode::Down)); // name
        app.on_key(code(KeyCode::Down)); // vcpus
        app.on_key(key('2'));
        app.on_key(code(KeyCode::Tab)); // memory
        for c in "1G".chars() {
            app.on_key(key(c));
        }
        let effects = app.on_key(code(KeyCode::Enter));
        let [Effect::Call(Action::Create(p))] = effects.as_slice() else {
            panic!("{effects:?}")
        };
        assert_eq!(p.name, "web");
        assert_eq!(p.image.as_deref(), Some("tiny"));
        assert_eq!(p.vcpus, Some(2));
        assert_eq!(p.memory_mib, Some(1024));
        let action = Action::Create(p.clone());
        app.apply(Msg::ActionDone {
            action: Box::new(action),
            outcome: Ok(Some("op-9".into())),
        });
        assert_eq!(app.op_selected.as_deref(), Some("op-9"));
        assert_eq!(app.focus, Pane::Ops);
    }

    #[test]
    fn a_bad_vcpus_value_is_said_not_sent() {
        let mut form = CreateForm::new(vec![]);
        form.name = "x".into();
        form.vcpus = "two".into();
        assert!(form.params().unwrap_err().contains("vCPUs"));
        form.vcpus = String::new();
        form.memory = "lots".into();
        assert!(form.params().is_err());
    }

    #[test]
    fn failed_actions_land_in_the_status_line() {
        let mut app = app_with(vec![vm("dev", VmState::Running)]);
        app.apply(Msg::ActionDone {
            action: Box::new(Action::Stop("dev".into())),
            outcome: Err("conflict".into()),
        });
        assert_eq!(app.status, Some(("stop dev: conflict".to_owned(), true)));
    }

    #[test]
    fn log_lines_of_an_old_view_are_dropped() {
        let mut app = app_with(vec![vm("dev", VmState::Running)]);
        let effects = app.on_key(key('l'));
        assert_eq!(
            effects,
            vec![Effect::FollowLog {
                path: "/tmp/vm/console.log".into(),
                generation: 1
            }]
        );
        app.apply(Msg::LogLines {
            generation: 0,
            lines: vec!["old".into()],
        });
        app.apply(Msg::LogLines {
            generation: 1,
            lines: vec!["new".into()],
        });
        let Some(Modal::Log(log)) = &app.modal else {
            panic!()
        };
        assert_eq!(log.lines, ["new"]);
        assert_eq!(app.on_key(code(KeyCode::Esc)), vec![Effect::StopLog]);
        assert!(app.modal.is_none());
    }

    #[test]
    fn stats_only_for_running_vms() {
        let mut app = app_with(vec![vm("a", VmState::Running), vm("b", VmState::Stopped)]);
        assert_eq!(app.running_vm_names(), ["a"]);
        let stats = |name: &str| {
            Box::new(VmStats {
                name: name.into(),
                uptime_s: 1.0,
                load: [0.0; 3],
                cpu_percent: Some(12.5),
                memory_total_bytes: 1 << 30,
                memory_used_bytes: 1 << 28,
                disks: vec![],
                sampled_at_ms: 0,
            })
        };
        app.apply(Msg::Stats(stats("a")));
        app.apply(Msg::Stats(stats("b")));
        assert!(app.stats.contains_key("a"));
        assert!(!app.stats.contains_key("b"));
    }
}
