//! `rmr1 serve` as a child process, for what only a real process shows: its exit status, its
//! resident memory and CPU time, its file-descriptor limit.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub struct ServeProcess {
    pub child: Child,
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServeProcess {
    /// Starts `rmr1 serve` on the tiny model in `model_dir` with `extra` flags and `env`, under a
    /// file-descriptor limit when `max_fds` is given, and waits until it serves.
    pub fn start(
        model_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        max_fds: Option<u32>,
    ) -> Self {
        let binary = env!("CARGO_BIN_EXE_rmr1");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--model".into(),
            model_dir.to_str().unwrap().into(),
            "--family".into(),
            "instruct".into(),
            "--metrics-listen".into(),
            "off".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--kv-cache-mib".into(),
            "64".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut command = match max_fds {
            // The shell sets the limit, then becomes rmr1 (same pid).
            Some(n) => {
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(binary)
                    .args(&args);
                c
            }
            None => {
                let mut c = Command::new(binary);
                c.args(&args);
                c
            }
        };
        command
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn,rmr1=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("rmr1 serving on ").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = addr_tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match addr_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr,
            Err(_) => panic!(
                "rmr1 serve did not start:\n{}",
                log.lock().unwrap().join("\n")
            ),
        };
        Self { child, addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Resident memory, bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib << 10
    }

    /// CPU time (user + system) so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // The kernel reports in USER_HZ, 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The health status of `service` ("" = overall), or the error that prevented asking.
pub async fn health_status(url: &str, service: &str) -> Result<i32, String> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| s.to_string())
}
