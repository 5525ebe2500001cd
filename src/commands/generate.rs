//! `storegc completions SHELL` and `storegc man`: shell completions and the
//! man page, generated from the clap definition in [`crate::cli`] so they
//! never drift from the flags the binary accepts. `nix/package.nix` runs
//! both at install time; both write to stdout only.

use anyhow::{Context, Result};
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;

use crate::cli::{CompletionsArgs, ManArgs, ManPage};
use crate::exit::ExitCode;

/// The name the completion scripts and the man page are written for.
const BIN: &str = "storegc";

pub fn completions(args: &CompletionsArgs) -> Result<ExitCode> {
    super::write_stdout(&completion_script(args.shell)?)?;
    Ok(ExitCode::Success)
}

pub fn man(args: &ManArgs) -> Result<ExitCode> {
    let page = match args.page {
        ManPage::Storegc => man_page()?,
        ManPage::Policy => crate::policy::reference::man_page(),
    };
    super::write_stdout(&page)?;
    Ok(ExitCode::Success)
}

/// The completion script for `shell`, for the binary named `storegc`.
pub fn completion_script(shell: Shell) -> Result<String> {
    let mut cmd = crate::cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    String::from_utf8(out).context("completion script is not UTF-8")
}

/// The string definition roff puts before every piece it renders (for
/// `\*(Aq`, a straight apostrophe); [`man_page`] keeps one, after `.TH`.
const APOSTROPHE_PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// `storegc(1)`: the top-level page (global options), then a COMMANDS
/// section with one subsection per command (its synopsis, description and
/// own options), then exit status, environment, files and examples. One
/// page, since `storegc man` prints one page. Deterministic: no date, so
/// the package's output does not depend on the build time.
pub fn man_page() -> Result<String> {
    let mut cmd = crate::cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = Man::new(cmd.clone()).manual("storegc manual");
    let mut page = String::new();
    for render in [
        Man::render_title as Render,
        Man::render_name_section,
        Man::render_synopsis_section,
        Man::render_description_section,
        Man::render_options_section,
    ] {
        page += &render_piece(&man, render)?;
    }
    page += ".SH COMMANDS\n";
    for sub in leaf_commands(&cmd) {
        page += &command_subsection(&sub)?;
    }
    page += &trailer().render();
    page += &render_piece(&man, Man::render_version_section)?;

    let body = page.replace(APOSTROPHE_PREAMBLE, "");
    let (title, rest) = body.split_once('\n').unwrap_or((&body, ""));
    Ok(format!("{title}\n{APOSTROPHE_PREAMBLE}{rest}"))
}

type Render = fn(&Man, &mut dyn std::io::Write) -> std::io::Result<()>;

fn render_piece(man: &Man, render: Render) -> Result<String> {
    let mut out = Vec::new();
    render(man, &mut out)?;
    String::from_utf8(out).context("man page is not UTF-8")
}

/// Every command that runs something (`plan`, ..., `policy check`), in
/// definition order, each named with its full path (`storegc policy
/// check`) once `cmd` is built.
fn leaf_commands(cmd: &clap::Command) -> Vec<clap::Command> {
    let mut leaves = Vec::new();
    for sub in cmd.get_subcommands() {
        if sub.has_subcommands() {
            leaves.extend(leaf_commands(sub));
        } else {
            leaves.push(sub.clone());
        }
    }
    leaves
}

/// One `.SS` subsection: the command's synopsis, description and own
/// options, each without its `.SH` heading. The global options are
/// described once, at the top, so their copies in each command (clap
/// propagates them) are hidden here, and so are help and version.
fn command_subsection(sub: &clap::Command) -> Result<String> {
    let name = sub.get_bin_name().unwrap_or(sub.get_name()).to_string();
    let hidden: Vec<String> = sub
        .get_arguments()
        .filter(|a| a.is_global_set() || matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| a.get_id().to_string())
        .collect();
    let mut sub = sub.clone();
    for id in hidden {
        sub = sub.mut_arg(id, |a| a.hide(true));
    }
    let man = Man::new(sub);
    let mut text = Roff::default().control("SS", [name.as_str()]).render();
    for (render, heading) in [
        (Man::render_synopsis_section as Render, "SYNOPSIS"),
        (Man::render_description_section, "DESCRIPTION"),
        (Man::render_options_section, "OPTIONS"),
    ] {
        let piece = render_piece(&man, render)?.replace(APOSTROPHE_PREAMBLE, "");
        let heading = format!(".SH {heading}\n");
        text += piece.strip_prefix(&heading).unwrap_or(&piece);
        if !text.ends_with("\n") {
            text.push('\n');
        }
        if heading != ".SH OPTIONS\n" {
            text += ".PP\n";
        }
    }
    Ok(text)
}

/// Exit status, environment, files, examples, see also.
fn trailer() -> Roff {
    let mut roff = Roff::default();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        ("0", "Everything asked for was done."),
        (
            "1",
            "Some work failed (some deletions failed, or apply was interrupted); details on stderr.",
        ),
        (
            "2",
            "Bad input (flags, policy, store, plan), with one line on stderr naming what is at fault; nothing was changed.",
        ),
    ] {
        roff.control("TP", []).text([bold(code)]).text([roman(meaning)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (names, meaning) in [
        (
            ["NIX_STORE_DIR", "NIX_STATE_DIR"],
            "The store and Nix's state directory, unless --store-dir or --state-dir is given.",
        ),
        (
            ["NIX_CONF_DIR", "NIX_CONFIG"],
            "Where nix.conf is read (keep-outputs, keep-derivations), as Nix reads it, unless --nix-conf is given.",
        ),
    ] {
        roff.control("TP", [])
            .text([bold(names[0]), roman(", "), bold(names[1])])
            .text([roman(meaning)]);
    }
    roff.control("TP", [])
        .text([bold("STOREGC_LOG")])
        .text([roman(
            "A tracing filter for the logs on stderr (e.g. debug).",
        )]);
    roff.control("SH", ["FILES"]);
    for (file, meaning) in [
        (
            "$NIX_STATE_DIR/storegc/apply.lock",
            "Held by apply; a second apply on the same store is refused.",
        ),
        (
            "/var/lib/storegc/nixos-configurations.txt",
            "The closure list of the fleet's current systems, one store path a line, that the shipped nix-cache policy protects; written by CI.",
        ),
    ] {
        roff.control("TP", []).text([italic(file)]).text([roman(meaning)]);
    }
    roff.control("SH", ["EXAMPLES"]);
    for (command, meaning) in [
        (
            "storegc plan --policy /etc/storegc/policy.toml --out plan.json",
            "Plan, print a summary, and write the plan for apply.",
        ),
        (
            "storegc apply plan.json --max-plan-age 1h",
            "Re-check the plan against the store as it is now and delete through nix-store --delete.",
        ),
        (
            "storegc plan --policy /etc/storegc/low-disk.toml --until-free 50GiB --out p.json",
            "Plan a prune for when disk runs low; apply it as above.",
        ),
    ] {
        roff.control("TP", []).text([bold(command)]).text([roman(meaning)]);
    }
    roff.control("SH", ["SEE ALSO"]).text([
        bold("nix-store"),
        roman("(1), "),
        bold("nix-collect-garbage"),
        roman("(1)"),
    ]);
    roff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subcommand_names() -> Vec<String> {
        crate::cli::command()
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect()
    }

    #[test]
    fn bash_completion_names_the_binary_and_every_command() {
        let script = completion_script(Shell::Bash).unwrap();
        assert!(script.contains("storegc"));
        for name in subcommand_names() {
            assert!(script.contains(&name), "no {name} in the bash completion");
        }
        // Nested commands and flags complete too.
        assert!(script.contains("check"));
        assert!(script.contains("--max-plan-age"));
    }

    #[test]
    fn every_shell_gets_a_script() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let script = completion_script(shell).unwrap();
            assert!(script.contains("storegc"), "{shell}: {script}");
            assert!(script.contains("plan"), "{shell}");
        }
    }

    #[test]
    fn man_page_is_roff_with_every_command_and_its_options() {
        let page = man_page().unwrap();
        assert!(page.starts_with(".TH storegc 1"), "{}", &page[..80]);
        assert!(page.contains("storegc"));
        for name in subcommand_names() {
            assert!(page.contains(&name), "no {name} in the man page");
        }
        // Each command has its subsection, named by its full path.
        assert!(page.contains(".SS \"storegc policy check\""), "{page}");
        assert!(page.contains(".SS \"storegc apply\""));
        // Command options are there, and the global ones only once.
        assert!(page.contains("max\\-plan\\-age"));
        assert_eq!(page.matches("\\-\\-store\\-dir\\fR").count(), 2, "{page}");
        assert!(page.contains(".SH \"EXIT STATUS\""));
        // The section headings that the subsections replace are gone.
        assert_eq!(page.matches(".SH SYNOPSIS").count(), 1);
        assert_eq!(page.matches(".SH OPTIONS").count(), 1);
        // No page of its own per command (storegc-plan(1)) is referred to.
        assert!(!page.contains("storegc\\-plan(1)"));
        // roff's apostrophe definition once, right after the title.
        assert_eq!(page.matches(".ds Aq").count(), 2);
        assert!(page.lines().nth(1).unwrap().starts_with(".ie"));
    }

    #[test]
    fn man_page_does_not_depend_on_the_clock() {
        assert_eq!(man_page().unwrap(), man_page().unwrap());
    }
}
