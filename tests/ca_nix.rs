//! Content-addressed derivations (`experimental-features =
//! ca-derivations`) against real Nix: a floating CA output has no
//! `DerivationOutputs` row, so under keep-outputs a live `.drv` keeps it
//! only through `Realisations`. Nix 2.8's own two walks disagree there (a
//! root's forward walk follows `Realisations`, the referrer walk does
//! not, so a path can be both `--print-dead` and `--print-live`); the
//! oracle that keeps more is "valid paths minus `--print-live`", and the
//! plan must equal it.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;

use common::{NixStore, Rng};

/// A random mix of floating CA and ordinary derivations, each depending on
/// a few earlier ones; returns the expression's text.
fn expression(rng: &mut Rng, n: usize) -> String {
    let mut e = String::from(
        "let mk = name: ca: deps: derivation ({ inherit name; system = builtins.currentSystem; \
         builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${name} ${toString deps} > $out\" ]; } \
         // (if ca then { __contentAddressed = true; outputHashMode = \"recursive\"; \
         outputHashAlgo = \"sha256\"; } else { }));\n",
    );
    for i in 0..n {
        let ca = rng.chance(0.7);
        let deps: Vec<String> = (0..i)
            .filter(|_| rng.chance(0.3))
            .map(|j| format!("d{j}"))
            .collect();
        let _ = writeln!(e, "  d{i} = mk \"x{i}\" {ca} [ {} ];", deps.join(" "));
    }
    e.push_str("in { ");
    for i in 0..n {
        let _ = write!(e, "inherit d{i}; ");
    }
    e.push('}');
    e
}

fn check(seed: u64, keep_outputs: bool) {
    let store = NixStore::new();
    store.set_conf_text(&format!(
        "experimental-features = ca-derivations\nkeep-outputs = {keep_outputs}\n"
    ));
    let mut rng = Rng::new(seed);
    let n = 8;
    let file = store.root().join("ca.nix");
    std::fs::write(&file, expression(&mut rng, n)).expect("writing the expression");
    let mut drvs = Vec::new();
    for i in 0..n {
        let attr = format!("d{i}");
        let drv = store.run("nix-instantiate", &[file.to_str().unwrap(), "-A", &attr]);
        drvs.push(drv.trim().to_string());
    }
    // Build some, then root some .drv files and some outputs.
    let mut note = String::new();
    for (i, drv) in drvs.iter().enumerate() {
        if rng.chance(0.6) {
            let out = store.nix_store(&["-r", drv]);
            if rng.chance(0.3) {
                let out = out.trim().to_string();
                store.add_gcroot_link(&format!("out{i}"), &out);
                let _ = writeln!(note, "root out {out}");
            }
        }
        if rng.chance(0.4) {
            store.add_gcroot_link(&format!("drv{i}"), drv);
            let _ = writeln!(note, "root drv {drv}");
        }
    }
    let live = store.print_live();
    let want: BTreeSet<String> = store.valid_paths().difference(&live).cloned().collect();
    let got = store.storegc_plan_paths();
    assert_eq!(
        got, want,
        "seed {seed}, keep-outputs {keep_outputs}: plan vs valid minus --print-live\n{note}"
    );
}

#[test]
fn ca_stores_plan_valid_paths_minus_print_live() {
    if !common::nix_available("ca_stores_plan_valid_paths_minus_print_live") {
        return;
    }
    for seed in 1..=4 {
        check(seed, true);
        check(seed, false);
    }
}
