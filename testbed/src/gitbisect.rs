//! Driving `git bisect run` in a kernel tree, with any command as the step.
//!
//! The step's exit code is git's protocol: 0 good, 125 skip, 1..=127 bad,
//! 128 and above abort the bisect. The testbed's own codes are the same
//! except 2 (bad input), which must not read as "bad": `testbed bisect-step`
//! turns it into 128.
//!
//! Whatever happens (the step aborts, git fails, the caller is dropped by
//! Ctrl-C), the tree is left as it was found: the bisect is reset, which
//! checks the original branch or commit out again.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// How a bisect ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitBisectOutcome {
    /// git named the first bad commit.
    FirstBad { commit: String, subject: String },
    /// Skipped commits hide the boundary: the first bad commit is one of these.
    OnlySkippedLeft { candidates: Vec<String> },
}

/// What `drive` ran and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitBisectResult {
    pub outcome: GitBisectOutcome,
    /// `git bisect log` before the reset.
    pub log: String,
    /// Commits the step was run on, in order, with what it said.
    pub steps: Vec<(String, StepVerdict)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepVerdict {
    Good,
    Bad,
    Skip,
}

#[derive(Debug, thiserror::Error)]
pub enum GitBisectError {
    #[error("{tree}: {why}")]
    BadTree { tree: PathBuf, why: String },
    #[error("git {args} failed in {tree}: {detail}")]
    Git {
        tree: PathBuf,
        args: String,
        detail: String,
    },
    #[error("the bisect step aborted the bisect (exit {code:?}) at {commit}:\n{output}")]
    StepAborted {
        commit: String,
        code: Option<i32>,
        output: String,
    },
}

fn git(tree: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(tree);
    c
}

fn run_git(tree: &Path, args: &[&str]) -> Result<Output, GitBisectError> {
    git(tree)
        .args(args)
        .output()
        .map_err(|e| GitBisectError::Git {
            tree: tree.to_path_buf(),
            args: args.join(" "),
            detail: e.to_string(),
        })
}

fn git_ok(tree: &Path, args: &[&str]) -> Result<String, GitBisectError> {
    let out = run_git(tree, args)?;
    if !out.status.success() {
        return Err(GitBisectError::Git {
            tree: tree.to_path_buf(),
            args: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Where HEAD is: a branch (`refs/heads/x`) or a detached commit.
pub fn head_state(tree: &Path) -> Result<String, GitBisectError> {
    match git_ok(tree, &["symbolic-ref", "-q", "HEAD"]) {
        Ok(r) if !r.is_empty() => Ok(r),
        _ => git_ok(tree, &["rev-parse", "HEAD"]),
    }
}

/// Refuses a tree with uncommitted changes to tracked files or a bisect
/// already under way: neither is ours to overwrite or end.
pub fn check_tree(tree: &Path) -> Result<(), GitBisectError> {
    let bad_tree = |why: String| GitBisectError::BadTree {
        tree: tree.to_path_buf(),
        why,
    };
    let in_progress = git_ok(tree, &["rev-parse", "--git-path", "BISECT_START"])?;
    let in_progress = if Path::new(&in_progress).is_absolute() {
        PathBuf::from(in_progress)
    } else {
        tree.join(in_progress)
    };
    if in_progress.exists() {
        return Err(bad_tree(
            "a bisect is already under way there (git bisect reset ends it)".into(),
        ));
    }
    let dirty = git_ok(tree, &["status", "--porcelain", "--untracked-files=no"])?;
    if !dirty.is_empty() {
        return Err(bad_tree(format!("it has uncommitted changes:\n{dirty}")));
    }
    Ok(())
}

/// Checks the branch or commit that was checked out when it was made out
/// again when dropped: for checkouts outside `git bisect` (the two ends).
pub struct RestoreHead {
    tree: PathBuf,
    head: String,
}

impl RestoreHead {
    pub fn new(tree: &Path) -> Result<RestoreHead, GitBisectError> {
        Ok(RestoreHead {
            tree: tree.to_path_buf(),
            head: head_state(tree)?,
        })
    }
}

impl Drop for RestoreHead {
    fn drop(&mut self) {
        let target = self.head.strip_prefix("refs/heads/").unwrap_or(&self.head);
        let _ = run_git(&self.tree, &["checkout", "-q", target]);
    }
}

/// Resets the bisect when dropped, however the bisect ended.
struct ResetGuard<'a> {
    tree: &'a Path,
}

impl Drop for ResetGuard<'_> {
    fn drop(&mut self) {
        let _ = run_git(self.tree, &["bisect", "reset"]);
    }
}

/// Runs `git bisect start BAD GOOD` and `git bisect run STEP...` in `tree`
/// (which must have no uncommitted changes and no bisect under way), then
/// resets it. `on_line` sees git's output as it comes.
pub fn drive(
    tree: &Path,
    good: &str,
    bad: &str,
    step: &[OsString],
    on_line: &mut dyn FnMut(&str),
) -> Result<GitBisectResult, GitBisectError> {
    let bad_tree = |why: String| GitBisectError::BadTree {
        tree: tree.to_path_buf(),
        why,
    };
    check_tree(tree)?;
    let good_sha = git_ok(
        tree,
        &["rev-parse", "--verify", "-q", &format!("{good}^{{commit}}")],
    )
    .map_err(|_| bad_tree(format!("unknown revision {good}")))?;
    let bad_sha = git_ok(
        tree,
        &["rev-parse", "--verify", "-q", &format!("{bad}^{{commit}}")],
    )
    .map_err(|_| bad_tree(format!("unknown revision {bad}")))?;
    if run_git(tree, &["merge-base", "--is-ancestor", &good_sha, &bad_sha])?
        .status
        .code()
        != Some(0)
    {
        return Err(bad_tree(format!("{good} is not an ancestor of {bad}")));
    }

    let _reset = ResetGuard { tree };
    git_ok(tree, &["bisect", "start", &bad_sha, &good_sha])?;
    // git's own lines (and the step's stdout) as they come; the step's
    // stderr goes straight to ours
    let mut run = git(tree);
    run.args(["bisect", "run"])
        .args(step)
        .stdout(std::process::Stdio::piped());
    let mut child = run.spawn().map_err(|e| GitBisectError::Git {
        tree: tree.to_path_buf(),
        args: "bisect run".into(),
        detail: e.to_string(),
    })?;
    let mut stdout = String::new();
    {
        use std::io::BufRead;
        let pipe = child.stdout.take().expect("piped");
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            on_line(&line);
            stdout.push_str(&line);
            stdout.push('\n');
        }
    }
    let status = child.wait().map_err(|e| GitBisectError::Git {
        tree: tree.to_path_buf(),
        args: "bisect run".into(),
        detail: e.to_string(),
    })?;
    let log = git_ok(tree, &["bisect", "log"]).unwrap_or_default();
    let steps = steps_from_log(&log);
    let outcome = if let Some(commit) = first_bad(&stdout) {
        let subject = git_ok(tree, &["log", "-1", "--format=%s", &commit]).unwrap_or_default();
        GitBisectOutcome::FirstBad { commit, subject }
    } else if stdout.contains("only 'skip'ped commits left") {
        let candidates = stdout
            .lines()
            .skip_while(|l| !l.contains("could be any of"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.len() >= 7 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string)
            .collect();
        GitBisectOutcome::OnlySkippedLeft { candidates }
    } else {
        let commit = git_ok(tree, &["rev-parse", "HEAD"]).unwrap_or_default();
        return Err(GitBisectError::StepAborted {
            commit,
            code: status.code(),
            output: stdout
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"),
        });
    };
    Ok(GitBisectResult {
        outcome,
        log,
        steps,
    })
}

/// `<sha> is the first bad commit` in `git bisect run`'s output.
fn first_bad(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        l.strip_suffix(" is the first bad commit")
            .map(|s| s.trim().to_string())
    })
}

/// The `git bisect good|bad|skip <sha>` lines of a bisect log, in order
/// (the endpoints given to `git bisect start` are only comments there).
fn steps_from_log(log: &str) -> Vec<(String, StepVerdict)> {
    let mut steps = Vec::new();
    for line in log.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("git") || words.next() != Some("bisect") {
            continue;
        }
        let verdict = match words.next() {
            Some("good") => StepVerdict::Good,
            Some("bad") => StepVerdict::Bad,
            Some("skip") => StepVerdict::Skip,
            _ => continue,
        };
        for sha in words {
            steps.push((sha.to_string(), verdict));
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A repo with commits c0..c{n-1}; `value` holds "old" before
    /// `change` and "new" from it on. Returns the commit shas.
    fn repo(dir: &Path, n: usize, change: usize) -> Vec<String> {
        let g = |args: &[&str]| {
            let out = git(dir).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        g(&["init", "-q", "-b", "main"]);
        g(&["config", "user.name", "t"]);
        g(&["config", "user.email", "t@localhost"]);
        let mut shas = Vec::new();
        for i in 0..n {
            fs::write(
                dir.join("value"),
                if i < change { "old\n" } else { "new\n" },
            )
            .unwrap();
            fs::write(dir.join("counter"), format!("{i}\n")).unwrap();
            g(&["add", "-A"]);
            g(&["commit", "-q", "-m", &format!("c{i}")]);
            shas.push(g(&["rev-parse", "HEAD"]));
        }
        shas
    }

    fn sh(script: &str) -> Vec<OsString> {
        ["sh", "-c", script].iter().map(OsString::from).collect()
    }

    /// Good while `value` says old; skip where `counter` is in `skip`.
    fn step(skip: &[usize]) -> Vec<OsString> {
        let skips: String = skip
            .iter()
            .map(|s| format!("[ \"$(cat counter)\" = {s} ] && exit 125; "))
            .collect();
        sh(&format!("{skips}grep -q old value && exit 0; exit 1"))
    }

    #[test]
    fn finds_the_first_bad_commit_and_restores_the_branch() {
        let t = tempfile::tempdir().unwrap();
        let shas = repo(t.path(), 12, 7);
        let before = head_state(t.path()).unwrap();
        assert_eq!(before, "refs/heads/main");
        let r = drive(t.path(), &shas[0], &shas[11], &step(&[]), &mut |_| {}).unwrap();
        assert_eq!(
            r.outcome,
            GitBisectOutcome::FirstBad {
                commit: shas[7].clone(),
                subject: "c7".into()
            }
        );
        assert!(r.steps.len() >= 3, "{:?}", r.steps);
        for (sha, verdict) in &r.steps {
            let i = shas.iter().position(|s| s == sha).unwrap();
            assert_eq!(
                *verdict,
                if i < 7 {
                    StepVerdict::Good
                } else {
                    StepVerdict::Bad
                }
            );
        }
        assert!(r.log.contains("# first bad commit"), "{}", r.log);
        // the tree is back where it was: on main, at its tip, clean, no bisect
        assert_eq!(head_state(t.path()).unwrap(), before);
        assert_eq!(git_ok(t.path(), &["rev-parse", "HEAD"]).unwrap(), shas[11]);
        assert_eq!(git_ok(t.path(), &["status", "--porcelain"]).unwrap(), "");
        assert!(run_git(t.path(), &["bisect", "log"]).unwrap().status.code() != Some(0));
    }

    #[test]
    fn a_detached_head_is_restored_too() {
        let t = tempfile::tempdir().unwrap();
        let shas = repo(t.path(), 6, 3);
        git_ok(t.path(), &["checkout", "-q", "--detach", &shas[4]]).unwrap();
        drive(t.path(), &shas[0], &shas[5], &step(&[]), &mut |_| {}).unwrap();
        assert_eq!(head_state(t.path()).unwrap(), shas[4]);
    }

    #[test]
    fn skipped_commits_are_stepped_around_or_reported() {
        let t = tempfile::tempdir().unwrap();
        let shas = repo(t.path(), 12, 7);
        // skipping a commit away from the boundary changes nothing
        let r = drive(t.path(), &shas[0], &shas[11], &step(&[5]), &mut |_| {}).unwrap();
        assert_eq!(
            r.outcome,
            GitBisectOutcome::FirstBad {
                commit: shas[7].clone(),
                subject: "c7".into()
            }
        );
        // skipping the first bad commit leaves git unable to decide between it and the next
        let r = drive(t.path(), &shas[0], &shas[11], &step(&[7]), &mut |_| {}).unwrap();
        match r.outcome {
            GitBisectOutcome::OnlySkippedLeft { candidates } => {
                assert!(
                    candidates.iter().any(|c| shas[7].starts_with(c.as_str())),
                    "{candidates:?}"
                );
                assert!(
                    candidates.iter().any(|c| shas[8].starts_with(c.as_str())),
                    "{candidates:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            r.steps
                .iter()
                .any(|(s, v)| *s == shas[7] && *v == StepVerdict::Skip),
            "{:?}",
            r.steps
        );
        assert_eq!(head_state(t.path()).unwrap(), "refs/heads/main");
    }

    #[test]
    fn an_aborting_step_ends_the_bisect_and_restores_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let shas = repo(t.path(), 8, 4);
        let e = drive(
            t.path(),
            &shas[0],
            &shas[7],
            &sh("echo bad input; exit 128"),
            &mut |_| {},
        )
        .unwrap_err();
        match &e {
            GitBisectError::StepAborted { output, .. } => {
                assert!(output.contains("bad input"), "{output}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(head_state(t.path()).unwrap(), "refs/heads/main");
        assert_eq!(git_ok(t.path(), &["rev-parse", "HEAD"]).unwrap(), shas[7]);
        assert!(run_git(t.path(), &["bisect", "log"]).unwrap().status.code() != Some(0));
    }

    #[test]
    fn refuses_dirty_trees_running_bisects_and_bad_revisions() {
        let t = tempfile::tempdir().unwrap();
        let shas = repo(t.path(), 4, 2);
        let err = |good: &str, bad: &str| {
            drive(t.path(), good, bad, &step(&[]), &mut |_| {})
                .unwrap_err()
                .to_string()
        };
        assert!(err("nope", &shas[3]).ends_with("unknown revision nope"));
        assert!(err(&shas[3], &shas[0]).contains("is not an ancestor of"));
        fs::write(t.path().join("value"), "edited\n").unwrap();
        assert!(err(&shas[0], &shas[3]).contains("uncommitted changes"));
        assert_eq!(
            fs::read_to_string(t.path().join("value")).unwrap(),
            "edited\n",
            "the edit is left alone"
        );
        git_ok(t.path(), &["checkout", "-q", "value"]).unwrap();
        git_ok(t.path(), &["bisect", "start", &shas[3], &shas[0]]).unwrap();
        assert!(err(&shas[0], &shas[3]).contains("already under way"));
        // and the bisect that was under way is not ours to reset
        assert!(run_git(t.path(), &["bisect", "log"])
            .unwrap()
            .status
            .success());
    }

    #[test]
    fn restore_head_goes_back_to_the_branch() {
        let t = tempfile::tempdir().unwrap();
        let shas = repo(t.path(), 4, 2);
        {
            let _restore = RestoreHead::new(t.path()).unwrap();
            git_ok(t.path(), &["checkout", "-q", "--detach", &shas[1]]).unwrap();
            assert_eq!(head_state(t.path()).unwrap(), shas[1]);
        }
        assert_eq!(head_state(t.path()).unwrap(), "refs/heads/main");
        assert_eq!(git_ok(t.path(), &["rev-parse", "HEAD"]).unwrap(), shas[3]);
    }

    #[test]
    fn log_steps() {
        let log = "# bad: [bbb] c9\n# good: [aaa] c0\ngit bisect start 'bbb' 'aaa'\n\
                   # good: [ccc] c4\ngit bisect good ccc\n# skip: [ddd] c6\ngit bisect skip ddd\n# bad: [eee] c7\ngit bisect bad eee\n";
        assert_eq!(
            steps_from_log(log),
            [
                ("ccc".to_string(), StepVerdict::Good),
                ("ddd".to_string(), StepVerdict::Skip),
                ("eee".to_string(), StepVerdict::Bad)
            ]
        );
    }
}
