//! Command lines clap refuses: one line on stderr, `hbm-hook <command>: <what> (see hbm-hook
//! <command> --help)`, exit 2; `--help` and `--version` as clap prints them, exit 0; no ANSI colour
//! when stderr / stdout are not a terminal, even with `CLICOLOR_FORCE` set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hbm-hook"))
        .args(args)
        .env("CLICOLOR_FORCE", "1")
        .env_remove("NO_COLOR")
        .output()
        .unwrap()
}

#[test]
fn usage_errors_are_one_line_naming_the_command_and_exit_2() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["rewrite", "--size-cap", "1.5GiB"],
            "hbm-hook rewrite: invalid value '1.5GiB' for '--size-cap <BYTES>': size \"1.5GiB\": unknown unit \".5GiB\" (use B, KiB, MiB, GiB, TiB) (see hbm-hook rewrite --help)\n",
        ),
        (
            &["rewrite", "--bogus"],
            "hbm-hook rewrite: unexpected argument '--bogus' found (see hbm-hook rewrite --help)\n",
        ),
        (
            &["rewrite", "--topology", "X", "--sysfs-root", "Y"],
            "hbm-hook rewrite: the argument '--topology <FILE>' cannot be used with '--sysfs-root <DIR>' (see hbm-hook rewrite --help)\n",
        ),
        (
            &["doctor", "--json=3"],
            "hbm-hook doctor: unexpected value '3' for '--json' found; no more were expected (see hbm-hook doctor --help)\n",
        ),
        (
            &["frobnicate"],
            "hbm-hook: unrecognized subcommand 'frobnicate' (see hbm-hook --help)\n",
        ),
    ];
    for (args, line) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), line, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn help_and_version_print_as_clap_prints_them_without_colour_off_a_terminal() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("hbm-hook {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = run(&["rewrite", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("\nUsage: hbm-hook rewrite [OPTIONS]\n"), "{help}");
    assert!(help.contains("--size-cap <BYTES>"), "{help}");
    assert!(
        !help.contains('\u{1b}'),
        "no ANSI colour when stdout is a pipe: {help:?}"
    );
    assert!(out.stderr.is_empty());
}
