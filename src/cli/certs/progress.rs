//! A progress counter on stderr for long `certs` runs.

pub struct Progress {
    total: usize,
    shown: bool,
    width: usize,
}

impl Progress {
    pub fn new(total: usize, shown: bool) -> Progress {
        Progress {
            total,
            shown,
            width: 0,
        }
    }

    pub fn tick(&mut self, done: usize, label: &str) {
        if !self.shown {
            return;
        }
        use std::io::Write;
        let line = format!("[{done}/{}] {label}", self.total);
        let pad = self.width.saturating_sub(line.len());
        self.width = line.len();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}{}", " ".repeat(pad));
        let _ = err.flush();
    }

    pub fn finish(&self) {
        if self.shown && self.width > 0 {
            eprintln!();
        }
    }
}
