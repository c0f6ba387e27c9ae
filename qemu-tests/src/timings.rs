//! The timings table a scenario prints: one row per node, one column per
//! milestone, seconds since that node's power-on.

use std::time::Instant;

pub struct Timings {
    title: &'static str,
    columns: Vec<&'static str>,
    rows: Vec<(String, Instant, Vec<Option<f64>>)>,
}

impl Timings {
    pub fn new(columns: &[&'static str]) -> Timings {
        Self::titled("node (s after power-on)", columns)
    }

    /// A table whose rows are not nodes: `title` heads the first column
    /// (e.g. "step (s after the command)").
    pub fn titled(title: &'static str, columns: &[&'static str]) -> Timings {
        Timings {
            title,
            columns: columns.to_vec(),
            rows: vec![],
        }
    }

    /// A node powered on at `start`.
    pub fn row(&mut self, node: &str, start: Instant) {
        let n = self.columns.len();
        self.rows.push((node.to_owned(), start, vec![None; n]));
    }

    /// Records `column` for `node` now, unless already recorded.
    pub fn mark(&mut self, node: &str, column: &str) {
        let Some(c) = self.columns.iter().position(|x| *x == column) else {
            return;
        };
        if let Some((_, start, cells)) = self.rows.iter_mut().find(|r| r.0 == node)
            && cells[c].is_none()
        {
            cells[c] = Some(start.elapsed().as_secs_f64());
        }
    }

    /// Records `column` for `node` as the moment `at` (seen earlier, e.g.
    /// when a console line arrived), unless already recorded.
    pub fn mark_at(&mut self, node: &str, column: &str, at: Instant) {
        let start = self.rows.iter().find(|r| r.0 == node).map(|r| r.1);
        if let Some(start) = start {
            let secs = at.saturating_duration_since(start).as_secs_f64();
            self.set(node, column, secs);
        }
    }

    /// Records `column` for `node` as `secs` (a duration rather than a
    /// moment, e.g. the longest gap between two writes), unless already
    /// recorded.
    pub fn set(&mut self, node: &str, column: &str, secs: f64) {
        let Some(c) = self.columns.iter().position(|x| *x == column) else {
            return;
        };
        if let Some((_, _, cells)) = self.rows.iter_mut().find(|r| r.0 == node)
            && cells[c].is_none()
        {
            cells[c] = Some(secs);
        }
    }

    pub fn get(&self, node: &str, column: &str) -> Option<f64> {
        let c = self.columns.iter().position(|x| *x == column)?;
        self.rows.iter().find(|r| r.0 == node)?.2[c]
    }

    pub fn render(&self) -> String {
        let mut s = format!("{:<28}", self.title);
        for c in &self.columns {
            s.push_str(&format!(" {c:>12}"));
        }
        s.push('\n');
        for (node, _, cells) in &self.rows {
            s.push_str(&format!("{node:<28}"));
            for v in cells {
                match v {
                    Some(v) => s.push_str(&format!(" {v:>12.1}")),
                    None => s.push_str(&format!(" {:>12}", "-")),
                }
            }
            s.push('\n');
        }
        s
    }
}
