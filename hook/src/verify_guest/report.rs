//! The text form of a [`GuestReport`]: one line per GPU, its ranges, and each problem with the
//! host-side fix.

use std::fmt::Write;

use super::{GpuVerdict, GuestReport};

const MIB: u64 = 1 << 20;

/// The report as lines of text (ends with a newline).
pub fn render_text(report: &GuestReport) -> String {
    let mut text = String::new();
    if report.gpus.is_empty() {
        text.push_str("no GPU-class PCI function (class 03xxxx or 1200xx) in this guest\n");
    }
    for gpu in &report.gpus {
        text.push_str(&gpu_line(gpu));
        for range in &gpu.hbm {
            let base = range.base.map_or("-".to_string(), |b| format!("{b:#x}"));
            let dax = range.dax.as_deref().unwrap_or("-");
            let _ = writeln!(
                text,
                "  range {} {} MiB {:?} base {base} dax {dax} ({})",
                range.region,
                range.size_bytes / MIB,
                range.memmap,
                range.source
            );
        }
        for note in &gpu.notes {
            let _ = writeln!(text, "  note: {note}");
        }
        for problem in &gpu.problems {
            let _ = writeln!(
                text,
                "  FAIL {}: {}\n    fix: {}",
                problem.check, problem.message, problem.host_fix
            );
        }
    }
    let verdict = if report.ok {
        "every GPU has its HBM"
    } else {
        "a GPU lacks its HBM"
    };
    let _ = writeln!(text, "{verdict}");
    text
}

fn gpu_line(gpu: &GpuVerdict) -> String {
    let node = match &gpu.node {
        Some(n) => format!(
            "node {} {} {} {}",
            n.id,
            if n.online { "online" } else { "offline" },
            if n.cpu_less { "cpu-less" } else { "with-cpus" },
            if n.generic_initiator {
                "generic-initiator"
            } else {
                "no-generic-initiator"
            }
        ),
        None => match gpu.numa_node {
            Some(id) => format!("node {id} (absent)"),
            None => "numa_node -1".to_string(),
        },
    };
    let marking = gpu.marking.unwrap_or("-");
    let status = if gpu.ok { "ok" } else { "FAIL" };
    format!(
        "{} class {} {node} hbm {} MiB ({marking}) {status}\n",
        gpu.address,
        gpu.class,
        gpu.hbm_bytes / MIB
    )
}
