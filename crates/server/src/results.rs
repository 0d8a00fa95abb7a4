//! The `/execute` result store: what `GET /results/<task_id>` answers from.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

/// Where an `/execute` task stands.
#[derive(Debug, Clone)]
pub(crate) enum TaskState {
    /// Queued or running.
    Pending,
    /// Finished: the response body.
    Done(Value),
}

/// `/execute` results kept for `GET /results/<task_id>`: pending ones, and the latest finished
/// within a count and a byte budget (outputs can be megabytes each).
#[derive(Debug, Default)]
pub(crate) struct ResultStore {
    tasks: HashMap<String, TaskState>,
    finished: VecDeque<(String, usize)>,
    bytes: usize,
    keep: usize,
    max_bytes: usize,
}

impl ResultStore {
    pub fn new(keep: usize, max_bytes: usize) -> ResultStore {
        ResultStore {
            keep,
            max_bytes,
            ..ResultStore::default()
        }
    }

    pub fn pending(&mut self, id: &str) {
        self.tasks.insert(id.to_string(), TaskState::Pending);
    }

    /// Stores a finished result; the oldest go first when over the count or the byte budget
    /// (a result larger than the whole budget is not kept).
    pub fn done(&mut self, id: &str, body: Value) {
        let size = serde_json::to_vec(&body).map_or(usize::MAX, |v| v.len());
        if self.keep == 0 || size > self.max_bytes {
            self.tasks.remove(id);
            return;
        }
        self.tasks.insert(id.to_string(), TaskState::Done(body));
        self.finished.push_back((id.to_string(), size));
        self.bytes += size;
        while self.finished.len() > self.keep || self.bytes > self.max_bytes {
            match self.finished.pop_front() {
                Some((old, n)) => {
                    self.bytes -= n;
                    self.tasks.remove(&old);
                }
                None => break,
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<TaskState> {
        self.tasks.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_result_store_keeps_the_latest_finished_tasks() {
        let mut s = ResultStore::new(2, 1 << 20);
        s.pending("a");
        s.done("a", json!(1));
        s.done("b", json!(2));
        s.pending("p");
        s.done("c", json!(3));
        assert!(s.get("a").is_none(), "the oldest finished one went");
        assert!(matches!(s.get("b"), Some(TaskState::Done(_))));
        assert!(matches!(s.get("p"), Some(TaskState::Pending)));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn the_result_store_keeps_within_its_byte_budget() {
        let mut s = ResultStore::new(100, 100);
        s.done("a", json!("x".repeat(40)));
        s.done("b", json!("y".repeat(40)));
        s.done("c", json!("z".repeat(40)));
        assert!(s.get("a").is_none(), "over 100 bytes: the oldest went");
        assert!(s.get("c").is_some());
        s.done("huge", json!("h".repeat(500)));
        assert!(s.get("huge").is_none(), "larger than the budget: not kept");
        assert!(s.get("b").is_some() && s.get("c").is_some());
    }
}
