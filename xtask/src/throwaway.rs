//! Throwaway Postgres and Redis for `cargo xtask test`.
//!
//! The tests use the servers named by `AGENTMESH_TEST_DATABASE_URL` and
//! `AGENTMESH_TEST_REDIS_URL` (default: the machine's, on 127.0.0.1:5432 and
//! :6379). When one does not answer, a private server is started on a free
//! port with its files under `target/tmp/`, the tests are pointed at it
//! through those variables, and it is stopped and removed afterwards. Every
//! command goes through a [`Runner`], so the decisions are tested without
//! starting anything.

use crate::plan::{Cmd, Runner};
use anyhow::{bail, Context};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DATABASE_VAR: &str = "AGENTMESH_TEST_DATABASE_URL";
pub const REDIS_VAR: &str = "AGENTMESH_TEST_REDIS_URL";
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// What the decisions need to know about this machine.
pub trait Machine {
    fn env(&self, name: &str) -> Option<String>;
    /// Whether something accepts TCP connections at `host:port`.
    fn answers(&mut self, host_port: &str) -> bool;
    /// Waits (bounded) until `host:port` answers.
    fn wait_until_answers(&mut self, host_port: &str) -> bool;
    fn free_port(&mut self) -> anyhow::Result<u16>;
    /// The directory holding `initdb` and `pg_ctl`, if Postgres is installed.
    fn postgres_bin(&mut self) -> Option<PathBuf>;
    /// Whether `tool` is on the PATH.
    fn has(&mut self, tool: &str) -> bool;
    /// Postgres refuses to run as root: its commands then run as user `postgres`.
    fn is_root(&mut self) -> bool;
}

/// Servers started for one test run: the variables that point the tests at
/// them and the commands that stop and remove them.
#[derive(Debug, Default, PartialEq)]
pub struct Started {
    pub env: Vec<(String, String)>,
    pub stop: Vec<Cmd>,
}

impl Started {
    /// Stops what was started; failures are printed, not returned (this runs
    /// after the tests, whose outcome it must not hide).
    pub fn stop(&mut self, runner: &mut dyn Runner) {
        for cmd in self.stop.drain(..) {
            if let Err(error) = runner.run(&cmd) {
                eprintln!("xtask: could not clean up: {error:#}");
            }
        }
    }
}

/// Checks both servers and starts a throwaway one for each that does not
/// answer; `tmp` holds their files, `run_id` keeps concurrent runs apart.
pub fn ensure(
    runner: &mut dyn Runner,
    machine: &mut dyn Machine,
    tmp: &Path,
    run_id: u32,
) -> anyhow::Result<Started> {
    let mut started = Started::default();
    let result = ensure_postgres(runner, machine, tmp, run_id, &mut started)
        .and_then(|()| ensure_redis(runner, machine, tmp, run_id, &mut started));
    if let Err(error) = result {
        started.stop(runner);
        return Err(error);
    }
    Ok(started)
}

fn ensure_postgres(
    runner: &mut dyn Runner,
    machine: &mut dyn Machine,
    tmp: &Path,
    run_id: u32,
    started: &mut Started,
) -> anyhow::Result<()> {
    let url = machine
        .env(DATABASE_VAR)
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
    let target = host_port(&url, 5432);
    if machine.answers(&target) {
        return Ok(());
    }
    let Some(bin) = machine.postgres_bin() else {
        bail!(
            "Postgres does not answer at {target} and no Postgres server binaries (initdb, \
             pg_ctl) are on the PATH or under /usr/lib/postgresql/*/bin: install them \
             (apt-get install postgresql) or set {DATABASE_VAR} to a running server"
        );
    };
    let port = machine.free_port()?;
    let dir = tmp.join(format!("pg-{run_id}"));
    let dir_s = dir.display().to_string();
    println!(
        "xtask: Postgres does not answer at {target}; starting a throwaway one on port {port}"
    );
    let root = machine.is_root();
    let as_postgres = |program: &Path, args: &[&str]| -> Cmd {
        let program = program.display().to_string();
        if root {
            let mut all = vec!["-u", "postgres", "--", program.as_str()];
            all.extend_from_slice(args);
            Cmd::new("runuser", &all)
        } else {
            Cmd::new(&program, args)
        }
    };
    runner.run(&Cmd::new("mkdir", &["-p", &dir_s]))?;
    // From here on the directory exists: remove it whatever happens next.
    started.stop.push(Cmd::new("rm", &["-rf", &dir_s]));
    if root {
        runner.run(&Cmd::new("chown", &["postgres:", &dir_s]))?;
    }
    let data = format!("{dir_s}/data");
    let initdb = [
        "-D",
        &data,
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
    ];
    runner
        .run(&as_postgres(&bin.join("initdb"), &initdb))
        .context("initdb of the throwaway Postgres")?;
    let options = format!("-p {port} -c listen_addresses=127.0.0.1 -k {dir_s} -c fsync=off");
    let log = format!("{dir_s}/server.log");
    let pg_ctl = bin.join("pg_ctl");
    let start = ["-D", &data, "-l", &log, "-o", &options, "-w", "start"];
    runner
        .run(&as_postgres(&pg_ctl, &start))
        .with_context(|| format!("starting the throwaway Postgres (its log: {log})"))?;
    let stop = as_postgres(&pg_ctl, &["-D", &data, "-m", "immediate", "-w", "stop"]);
    started.stop.insert(0, stop);
    started.env.push((
        DATABASE_VAR.into(),
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
    ));
    Ok(())
}

fn ensure_redis(
    runner: &mut dyn Runner,
    machine: &mut dyn Machine,
    tmp: &Path,
    run_id: u32,
    started: &mut Started,
) -> anyhow::Result<()> {
    let url = machine
        .env(REDIS_VAR)
        .unwrap_or_else(|| DEFAULT_REDIS_URL.into());
    let target = host_port(&url, 6379);
    if machine.answers(&target) {
        return Ok(());
    }
    if !machine.has("redis-server") {
        bail!(
            "Redis does not answer at {target} and redis-server is not on the PATH: install \
             it (apt-get install redis-server) or set {REDIS_VAR} to a running server"
        );
    }
    let port = machine.free_port()?;
    let port_s = port.to_string();
    let dir = tmp.join(format!("redis-{run_id}"));
    let dir_s = dir.display().to_string();
    println!("xtask: Redis does not answer at {target}; starting a throwaway one on port {port}");
    runner.run(&Cmd::new("mkdir", &["-p", &dir_s]))?;
    started.stop.push(Cmd::new("rm", &["-rf", &dir_s]));
    let (pidfile, logfile) = (format!("{dir_s}/redis.pid"), format!("{dir_s}/redis.log"));
    runner
        .run(&Cmd::new(
            "redis-server",
            &[
                "--port",
                &port_s,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--dir",
                &dir_s,
                "--pidfile",
                &pidfile,
                "--logfile",
                &logfile,
            ],
        ))
        .context("starting the throwaway Redis")?;
    let stop = Cmd::new("redis-cli", &["-p", &port_s, "shutdown", "nosave"]);
    let at = stop_position(started, &dir_s);
    started.stop.insert(at, stop);
    let address = format!("127.0.0.1:{port}");
    if !machine.wait_until_answers(&address) {
        bail!("the throwaway Redis did not answer on {address}; its log: {logfile}");
    }
    started
        .env
        .push((REDIS_VAR.into(), format!("redis://127.0.0.1:{port}")));
    Ok(())
}

/// Stop commands go before the removal of their directory.
fn stop_position(started: &Started, dir: &str) -> usize {
    started
        .stop
        .iter()
        .position(|cmd| cmd.program == "rm" && cmd.args.last().is_some_and(|d| d == dir))
        .unwrap_or(started.stop.len())
}

/// `host:port` of a `scheme://[user[:password]@]host[:port][/path]` URL.
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    match host.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => host.to_string(),
        _ => format!("{host}:{default_port}"),
    }
}

/// The machine this runs on.
pub struct RealMachine;

impl Machine for RealMachine {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    fn answers(&mut self, host_port: &str) -> bool {
        let Ok(addresses) = host_port.to_socket_addrs() else {
            return false;
        };
        addresses
            .into_iter()
            .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
    }

    fn wait_until_answers(&mut self, host_port: &str) -> bool {
        for _ in 0..60 {
            if self.answers(host_port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }

    fn free_port(&mut self) -> anyhow::Result<u16> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
        Ok(listener.local_addr()?.port())
    }

    fn postgres_bin(&mut self) -> Option<PathBuf> {
        let mut installed: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
            .collect();
        // The newest version: directory names are major versions.
        installed.sort_by_key(|bin| {
            bin.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
        if let Some(bin) = installed.pop() {
            return Some(bin);
        }
        let found = std::process::Command::new("sh")
            .args(["-c", "command -v initdb"])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let initdb = PathBuf::from(String::from_utf8_lossy(&found.stdout).trim());
        let bin = initdb.parent()?.to_path_buf();
        bin.join("pg_ctl").is_file().then_some(bin)
    }

    fn has(&mut self, tool: &str) -> bool {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn is_root(&mut self) -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Records commands; failing commands start with one of `fail`.
    #[derive(Default)]
    struct FakeRunner {
        ran: Vec<String>,
        fail: Vec<&'static str>,
    }

    impl Runner for FakeRunner {
        fn has(&mut self, _tool: &str) -> bool {
            true
        }

        fn run(&mut self, cmd: &Cmd) -> anyhow::Result<()> {
            let line = cmd.to_string();
            self.ran.push(line.clone());
            if self.fail.iter().any(|f| line.starts_with(f)) {
                bail!("{line} failed");
            }
            Ok(())
        }

        fn output(&mut self, cmd: &Cmd) -> anyhow::Result<String> {
            self.run(cmd).map(|()| String::new())
        }
    }

    /// Servers in `up` answer; free ports count up from 40000.
    struct FakeMachine {
        env: HashMap<&'static str, String>,
        up: Vec<String>,
        postgres_bin: Option<PathBuf>,
        redis_server: bool,
        root: bool,
        next_port: u16,
    }

    impl Default for FakeMachine {
        fn default() -> Self {
            Self {
                env: HashMap::new(),
                up: vec!["127.0.0.1:5432".into(), "127.0.0.1:6379".into()],
                postgres_bin: Some(PathBuf::from("/usr/lib/postgresql/15/bin")),
                redis_server: true,
                root: false,
                next_port: 40000,
            }
        }
    }

    impl Machine for FakeMachine {
        fn env(&self, name: &str) -> Option<String> {
            self.env.get(name).cloned()
        }

        fn answers(&mut self, host_port: &str) -> bool {
            self.up.iter().any(|up| up == host_port)
        }

        fn wait_until_answers(&mut self, _host_port: &str) -> bool {
            true
        }

        fn free_port(&mut self) -> anyhow::Result<u16> {
            self.next_port += 1;
            Ok(self.next_port)
        }

        fn postgres_bin(&mut self) -> Option<PathBuf> {
            self.postgres_bin.clone()
        }

        fn has(&mut self, tool: &str) -> bool {
            tool == "redis-server" && self.redis_server
        }

        fn is_root(&mut self) -> bool {
            self.root
        }
    }

    fn run(machine: &mut FakeMachine) -> (FakeRunner, anyhow::Result<Started>) {
        let mut runner = FakeRunner::default();
        let started = ensure(&mut runner, machine, Path::new("/w/target/tmp"), 7);
        (runner, started)
    }

    fn programs(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn servers_that_answer_are_used_as_they_are() {
        let mut machine = FakeMachine::default();
        let (runner, started) = run(&mut machine);
        assert!(runner.ran.is_empty(), "{:?}", runner.ran);
        assert_eq!(started.unwrap(), Started::default());
    }

    #[test]
    fn configured_urls_are_the_ones_checked() {
        let mut machine = FakeMachine {
            up: vec!["db.internal:6543".into(), "cache:7000".into()],
            ..FakeMachine::default()
        };
        machine.env.insert(
            DATABASE_VAR,
            "postgres://u:p@db.internal:6543/x?sslmode=disable".into(),
        );
        machine.env.insert(REDIS_VAR, "redis://cache:7000/0".into());
        let (runner, started) = run(&mut machine);
        assert!(runner.ran.is_empty(), "{:?}", runner.ran);
        assert!(started.unwrap().env.is_empty());
    }

    #[test]
    fn a_silent_postgres_gets_a_throwaway_one_on_a_free_port() {
        let mut machine = FakeMachine {
            up: vec!["127.0.0.1:6379".into()],
            ..FakeMachine::default()
        };
        let (runner, started) = run(&mut machine);
        let started = started.unwrap();
        assert_eq!(
            programs(&runner.ran),
            [
                "mkdir",
                "/usr/lib/postgresql/15/bin/initdb",
                "/usr/lib/postgresql/15/bin/pg_ctl"
            ]
        );
        assert!(runner.ran[1].contains("-D /w/target/tmp/pg-7/data -U postgres --auth=trust"));
        assert!(runner.ran[2].contains("-p 40001 -c listen_addresses=127.0.0.1"));
        assert!(runner.ran[2].ends_with("-w start"));
        assert_eq!(
            started.env,
            [(
                DATABASE_VAR.to_string(),
                "postgres://postgres@127.0.0.1:40001/postgres".to_string()
            )]
        );
        let stop: Vec<String> = started.stop.iter().map(Cmd::to_string).collect();
        assert_eq!(
            stop,
            [
                "/usr/lib/postgresql/15/bin/pg_ctl -D /w/target/tmp/pg-7/data -m immediate \
                 -w stop",
                "rm -rf /w/target/tmp/pg-7",
            ]
        );
    }

    #[test]
    fn as_root_postgres_commands_run_as_the_postgres_user() {
        let mut machine = FakeMachine {
            up: vec!["127.0.0.1:6379".into()],
            root: true,
            ..FakeMachine::default()
        };
        let (runner, started) = run(&mut machine);
        assert_eq!(
            programs(&runner.ran),
            ["mkdir", "chown", "runuser", "runuser"]
        );
        assert!(
            runner.ran[2].starts_with("runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb")
        );
        assert!(started.unwrap().stop[0]
            .to_string()
            .starts_with("runuser -u postgres --"));
    }

    #[test]
    fn a_silent_redis_gets_a_throwaway_one_without_persistence() {
        let mut machine = FakeMachine {
            up: vec!["127.0.0.1:5432".into()],
            ..FakeMachine::default()
        };
        let (runner, started) = run(&mut machine);
        let started = started.unwrap();
        assert_eq!(programs(&runner.ran), ["mkdir", "redis-server"]);
        assert!(runner.ran[1]
            .starts_with("redis-server --port 40001 --bind 127.0.0.1 --save  --appendonly no"));
        assert_eq!(
            started.env,
            [(REDIS_VAR.to_string(), "redis://127.0.0.1:40001".to_string())]
        );
        let stop: Vec<String> = started.stop.iter().map(Cmd::to_string).collect();
        assert_eq!(
            stop,
            [
                "redis-cli -p 40001 shutdown nosave",
                "rm -rf /w/target/tmp/redis-7"
            ]
        );
    }

    #[test]
    fn both_silent_get_both_and_stop_each_before_removing_its_files() {
        let mut machine = FakeMachine {
            up: vec![],
            ..FakeMachine::default()
        };
        let (_, started) = run(&mut machine);
        let started = started.unwrap();
        assert_eq!(started.env.len(), 2);
        let programs: Vec<&str> = started.stop.iter().map(|c| c.program.as_str()).collect();
        assert_eq!(
            programs,
            ["/usr/lib/postgresql/15/bin/pg_ctl", "rm", "redis-cli", "rm"]
        );
    }

    #[test]
    fn missing_binaries_name_what_to_install() {
        let mut machine = FakeMachine {
            up: vec!["127.0.0.1:6379".into()],
            postgres_bin: None,
            ..FakeMachine::default()
        };
        let error = run(&mut machine).1.unwrap_err().to_string();
        assert!(error.contains("apt-get install postgresql"), "{error}");
        assert!(error.contains(DATABASE_VAR), "{error}");

        let mut machine = FakeMachine {
            up: vec!["127.0.0.1:5432".into()],
            redis_server: false,
            ..FakeMachine::default()
        };
        let error = run(&mut machine).1.unwrap_err().to_string();
        assert!(error.contains("apt-get install redis-server"), "{error}");
    }

    #[test]
    fn a_failed_start_cleans_up_what_was_started() {
        let mut machine = FakeMachine {
            up: vec![],
            redis_server: false,
            ..FakeMachine::default()
        };
        let (runner, started) = run(&mut machine);
        assert!(started.is_err());
        let tail: Vec<&str> = runner.ran[3..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "/usr/lib/postgresql/15/bin/pg_ctl -D /w/target/tmp/pg-7/data -m immediate -w stop",
                "rm -rf /w/target/tmp/pg-7",
            ]
        );

        let mut runner = FakeRunner {
            fail: vec!["/usr/lib/postgresql/15/bin/initdb"],
            ..FakeRunner::default()
        };
        let mut machine = FakeMachine {
            up: vec!["127.0.0.1:6379".into()],
            ..FakeMachine::default()
        };
        let result = ensure(&mut runner, &mut machine, Path::new("/w/target/tmp"), 7);
        assert!(format!("{:#}", result.unwrap_err()).contains("initdb"));
        assert_eq!(runner.ran.last().unwrap(), "rm -rf /w/target/tmp/pg-7");
    }

    /// The real machine, except that the configured servers are a port where
    /// nothing listens: both throwaway servers start for real.
    struct NothingConfigured(RealMachine);

    impl Machine for NothingConfigured {
        fn env(&self, name: &str) -> Option<String> {
            let port = 1;
            match name {
                DATABASE_VAR => Some(format!("postgres://postgres@127.0.0.1:{port}/postgres")),
                REDIS_VAR => Some(format!("redis://127.0.0.1:{port}")),
                _ => None,
            }
        }
        fn answers(&mut self, host_port: &str) -> bool {
            self.0.answers(host_port)
        }
        fn wait_until_answers(&mut self, host_port: &str) -> bool {
            self.0.wait_until_answers(host_port)
        }
        fn free_port(&mut self) -> anyhow::Result<u16> {
            self.0.free_port()
        }
        fn postgres_bin(&mut self) -> Option<PathBuf> {
            self.0.postgres_bin()
        }
        fn has(&mut self, tool: &str) -> bool {
            self.0.has(tool)
        }
        fn is_root(&mut self) -> bool {
            self.0.is_root()
        }
    }

    #[test]
    #[ignore = "starts real Postgres and Redis servers (needs their binaries)"]
    fn real_throwaway_servers_start_answer_and_stop() {
        let tmp = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
        let mut shell = crate::plan::ShellRunner;
        let mut machine = NothingConfigured(RealMachine);
        let mut started = ensure(&mut shell, &mut machine, &tmp, std::process::id()).unwrap();
        let urls: HashMap<String, String> = started.env.iter().cloned().collect();
        let targets = [
            host_port(&urls[DATABASE_VAR], 5432),
            host_port(&urls[REDIS_VAR], 6379),
        ];
        let psql = std::process::Command::new("psql")
            .args([urls[DATABASE_VAR].as_str(), "-tAc", "SELECT 41 + 1"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "42");
        for target in &targets {
            assert!(RealMachine.answers(target), "{target}");
        }
        started.stop(&mut shell);
        for target in &targets {
            assert!(!RealMachine.answers(target), "{target} still answers");
        }
        assert!(!tmp.join(format!("pg-{}", std::process::id())).exists());
    }

    #[test]
    fn host_and_port_of_urls() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/postgres", 1),
            "127.0.0.1:5432"
        );
        assert_eq!(host_port("postgres://u:p@db/x", 5432), "db:5432");
        assert_eq!(host_port("redis://127.0.0.1", 6379), "127.0.0.1:6379");
        assert_eq!(host_port("redis://h:7000/0", 6379), "h:7000");
    }
}
