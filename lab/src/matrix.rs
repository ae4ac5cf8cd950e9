//! The connectivity matrix: every pod to every pod, and every pod to the
//! outside host (which has no route to pods: a reply proves masquerade).

use std::fmt::Write as _;

use tartan_testbed::exec;

use crate::state::LabState;

pub struct Matrix {
    pub labels: Vec<String>,
    /// `cells[i][j]`: pod i reaches target j (pods, then "outside").
    pub cells: Vec<Vec<Option<bool>>>,
}

impl Matrix {
    pub fn failures(&self) -> usize {
        self.cells
            .iter()
            .flatten()
            .filter(|c| **c == Some(false))
            .count()
    }

    pub fn checks(&self) -> usize {
        self.cells.iter().flatten().filter(|c| c.is_some()).count()
    }

    pub fn render(&self) -> String {
        let width = self
            .labels
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(4)
            .max(7);
        let mut out = format!("{:width$}", "from\\to");
        for label in &self.labels {
            let _ = write!(out, " {label:>width$}");
        }
        let _ = writeln!(out, " {:>width$}", "outside");
        for (i, row) in self.cells.iter().enumerate() {
            let _ = write!(out, "{:width$}", self.labels[i]);
            for cell in row {
                let mark = match cell {
                    None => "-",
                    Some(true) => "ok",
                    Some(false) => "FAIL",
                };
                let _ = write!(out, " {mark:>width$}");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{} of {} paths work",
            self.checks() - self.failures(),
            self.checks()
        );
        out
    }
}

fn reaches(from_netns: &str, ip: &str) -> bool {
    exec(from_netns, &["ping", "-c", "1", "-W", "1", "-q", ip]).is_ok()
}

pub fn measure(state: &LabState) -> Matrix {
    let labels: Vec<String> = state
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.node, p.name))
        .collect();
    let cells = state
        .pods
        .iter()
        .map(|from| {
            let mut row: Vec<Option<bool>> = state
                .pods
                .iter()
                .map(|to| {
                    (to.netns != from.netns).then(|| reaches(&from.netns, &to.ip.to_string()))
                })
                .collect();
            row.push(Some(reaches(&from.netns, &state.outside.ip.to_string())));
            row
        })
        .collect();
    Matrix { labels, cells }
}
