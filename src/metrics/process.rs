//! Process CPU and memory, read from /proc/self on each scrape (the names and meaning of the
//! Prometheus client libraries' standard process metrics).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub struct ProcessCollector;

/// What /proc/self/stat says, parsed (pure, for tests).
#[derive(Debug, PartialEq)]
pub struct Stat {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub virtual_bytes: i64,
    pub threads: i64,
}

/// Parses /proc/self/stat. The command name (field 2) may contain spaces and parentheses: the
/// fields are counted from its last `)`.
pub fn parse_stat(text: &str, ticks_per_second: f64, page_size: i64) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<i64>().ok());
    let utime = field(14)?;
    let stime = field(15)?;
    Some(Stat {
        cpu_seconds: (utime + stime) as f64 / ticks_per_second,
        threads: field(20)?,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
    })
}

fn open_fds() -> Option<i64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Linux's USER_HZ and page size are 100 and 4 KiB on every platform vkube runs on.
        let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t, 100.0, 4096))
        else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stat.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stat.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.virtual_bytes,
            ),
            ("process_threads", "OS threads", stat.threads),
            (
                "process_open_fds",
                "Open file descriptors",
                open_fds().unwrap_or(0),
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name with spaces and a ')' of its own.
        let text = "4242 (vkube (x) y) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 50 0 0 20 0 7 0 100 123456789 2048 18446744073709551615";
        let s = parse_stat(text, 100.0, 4096).unwrap();
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 3.0,
                threads: 7,
                virtual_bytes: 123456789,
                resident_bytes: 2048 * 4096,
            }
        );
        assert!(parse_stat("garbage", 100.0, 4096).is_none());
    }

    #[test]
    fn this_process_reads_its_own_stat() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        let s = parse_stat(&text, 100.0, 4096).unwrap();
        assert!(s.resident_bytes > 0 && s.threads >= 1);
    }
}
