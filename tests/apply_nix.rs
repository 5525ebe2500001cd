//! `storegc apply` against real Nix: the real binary deletes through the
//! real `nix-store --delete` in private temporary stores, and Nix is the
//! judge of what had to stay.
//!
//! Covered here, because `apply` is the only code that deletes and a
//! mistake loses someone's build or rollback:
//! - on an unchanged store a plan leaves exactly Nix's live set (no
//!   policy) or exactly the policy's keep set, and `nix-store --verify
//!   --check-contents` is clean;
//! - a root added between plan and apply keeps its whole closure: a
//!   gcroots link, a new profile generation, a process holding a file
//!   open, a locked temp root; so does a new referrer of a planned path,
//!   rooted or not, and a root that appears while Nix is deleting;
//! - expired roots go only if they still point where the plan saw them,
//!   never a profile's current generation, never the user's `result`
//!   link;
//! - bad plans (truncated, another store's, stale, from the future, of
//!   another version) and a held apply lock are refused with exit 2, one
//!   line on stderr, and nothing changed;
//! - SIGKILL between batches and inside one (the whole process group, so
//!   `nix-store` dies mid-deletion too) leaves a store `nix-store
//!   --verify` accepts, and applying the same plan again finishes the job;
//!   SIGTERM stops after the current batch; Ctrl-C (SIGINT to the group)
//!   stops safely;
//! - `--dry-run` changes nothing and predicts the real run.
//!
//! `rebuilt_result_link_keeps_its_auto_root` pins a bug this suite found:
//! an auto root removed as expired although `nix-build -o` re-created it
//! for a new build after planning, whose output then went too.
//!
//! Several tests put a small shell script between storegc and Nix
//! (`--nix-store`, see [`Wrap`]): it records every call and can hold one
//! before or after the real `nix-store` runs, so the test can add a root
//! or send a signal at an exact point. Multi-batch runs use synthetic
//! stores with long store paths ([`NixStore::synthetic`]): apply cuts
//! batches by command-line bytes, so a few thousand long paths make
//! several batches.

mod apply_support;
mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apply_support::*;
use common::{run_ok, Graph, Hold, NixStore, Rng, Snapshot};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Unchanged stores

#[test]
fn unchanged_store_keeps_exactly_nix_live_set() {
    if !common::nix_available("unchanged_store_keeps_exactly_nix_live_set") {
        return;
    }
    // Nix's defaults, and both keep-* on (a `.drv` and its outputs keep
    // each other: cycles that must go in one batch).
    let confs = [
        common::GcConf::default(),
        common::GcConf {
            keep_outputs: Some(true),
            keep_derivations: Some(true),
        },
    ];
    for (k, conf) in confs.into_iter().enumerate() {
        let b = built(101 + k as u64, 24, conf);
        let live = b.store.print_live();
        let dead = b.store.print_dead_valid();
        let valid = b.store.valid_paths();
        assert!(dead.len() >= 10, "too little garbage: {dead:?}");
        let file = b.plan_file("plan.json");
        let plan = make_plan(&b.store, &file, &[]);
        assert_same("plan vs --print-dead", &dead, &planned(&plan));

        let run = apply(&b.store, &file, &[]);
        let report = run.expect_code(0).report();
        assert_same("deleted vs planned", &dead, &strs(&report["deleted"]));
        assert_eq!(report["failed"], Value::Array(vec![]), "{}", run.show());
        assert_eq!(
            report["skipped_live"],
            Value::Array(vec![]),
            "{}",
            run.show()
        );
        assert_eq!(report["interrupted"], Value::Bool(false));
        assert_eq!(report["dry_run"], Value::Bool(false));

        assert_only_live_left(&b.store, &live);
        assert_same(
            "valid paths after apply",
            &minus(&valid, &dead),
            &b.store.valid_paths(),
        );
        assert_verify_clean(&b.store, true);

        // Applying the same plan again finds everything gone.
        let again = apply(&b.store, &file, &[]);
        let report = again.expect_code(0).report();
        assert_eq!(report["deleted"], Value::Array(vec![]), "{}", again.show());
        assert_eq!(report["already_gone"].as_u64(), Some(dead.len() as u64));
    }
}

/// A policy that protects every path named `keep*` and everything those
/// keep: with a second, unrooted graph of `keep*` nodes, the delete set
/// is Nix's dead set minus that closure.
#[test]
fn unchanged_store_keeps_exactly_the_policy_keep_set() {
    if !common::nix_available("unchanged_store_keeps_exactly_the_policy_keep_set") {
        return;
    }
    let b = built(202, 18, common::GcConf::default());
    let mut rng = Rng::new(203);
    let keep_graph = Graph::random(&mut rng, 10, "keep");
    let build: Vec<usize> = (0..10)
        .filter(|&i| keep_graph.nodes[i].is_derivation())
        .collect();
    let keep_real = b.store.realise_graph(&keep_graph, &build);
    let policy = b.store.root().join("policy.toml");
    std::fs::write(&policy, "[protect]\nnames = [\"keep*\"]\n").expect("writing the policy");

    let live = b.store.print_live();
    let dead = b.store.print_dead_valid();
    let valid = b.store.valid_paths();
    let named_keep: BTreeSet<String> = keep_real
        .all_paths()
        .into_iter()
        .filter(|p| valid.contains(p))
        .collect();
    let protected = closure(&b.store, &named_keep);
    let want = minus(&dead, &protected);
    assert!(
        !want.is_empty() && want.len() < dead.len(),
        "the policy should keep some garbage and let some go"
    );

    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &["--policy", &policy.to_string_lossy()]);
    assert_same("policy plan", &want, &planned(&plan));
    let run = apply(&b.store, &file, &[]);
    let report = run.expect_code(0).report();
    assert_same("deleted", &want, &strs(&report["deleted"]));

    let after = b.store.valid_paths();
    assert_same("valid after apply", &minus(&valid, &want), &after);
    assert!(live.is_subset(&after), "live paths were deleted");
    assert!(protected.is_subset(&after), "protected paths were deleted");
    assert_verify_clean(&b.store, true);

    // A plan that selects nothing (everything is younger than an hour)
    // deletes nothing.
    let file = b.plan_file("young.json");
    let plan = make_plan(&b.store, &file, &["--older-than", "1h"]);
    assert!(planned(&plan).is_empty(), "{plan}");
    let before = Snapshot::of(&b.store.store_dir);
    apply(&b.store, &file, &[]).expect_code(0);
    let diff = before.diff(&Snapshot::of(&b.store.store_dir));
    assert!(diff.is_empty(), "an empty plan changed the store:\n{diff}");
}

// ---------------------------------------------------------------------------
// The store changes between plan and apply

/// What appears between plan and apply.
#[derive(Debug, Clone, Copy)]
enum NewRoot {
    GcrootLink,
    Generation,
    OpenFile,
    TempRoot,
}

/// Plans, roots the planned output with the largest planned closure in
/// the way given, applies, and checks against Nix: exactly the planned
/// paths Nix now calls dead are deleted, the new root's closure stays.
fn root_added_between_plan_and_apply(kind: NewRoot, seed: u64) {
    let b = built(seed, 24, common::GcConf::default());
    let file = b.plan_file("plan.json");
    let plan = planned(&make_plan(&b.store, &file, &[]));
    let (p, keep) = b.richest_planned_output(&plan);
    eprintln!("apply_nix: {kind:?} on {p}, closure of {}", keep.len());

    let mut holders = Vec::new();
    match kind {
        NewRoot::GcrootLink => {
            b.store.add_gcroot_link("late/new", &p);
        }
        NewRoot::Generation => b.store.set_profile(&b.profile(), &p),
        NewRoot::OpenFile => {
            holders.push(
                b.store
                    .spawn_holder(&[Hold::Open(p.clone().into())], &[], false),
            );
        }
        NewRoot::TempRoot => {
            holders.push(b.store.spawn_holder(
                &[Hold::TempRoots {
                    paths: vec![p.clone()],
                    exclusive: false,
                }],
                &[],
                false,
            ));
        }
    }
    let dead_now = b.store.print_dead_valid();
    assert!(
        !dead_now.contains(&p),
        "Nix should see the new {kind:?} root"
    );
    let valid = b.store.valid_paths();
    let want = and(&plan, &dead_now);

    let run = apply(&b.store, &file, &[]);
    let report = run.expect_code(0).report();
    assert_same(
        &format!("deleted with a new {kind:?} root"),
        &want,
        &strs(&report["deleted"]),
    );
    assert_same(
        "kept because live now",
        &minus(&plan, &dead_now),
        &strs(&report["skipped_live"]),
    );
    let after = b.store.valid_paths();
    assert_same("valid after apply", &minus(&valid, &want), &after);
    let lost = minus(&keep, &after);
    assert!(lost.is_empty(), "the new {kind:?} root lost {lost:#?}");
    assert_verify_clean(&b.store, false);
    drop(holders);
}

#[test]
fn new_gcroot_link_keeps_its_closure() {
    if common::nix_available("new_gcroot_link_keeps_its_closure") {
        root_added_between_plan_and_apply(NewRoot::GcrootLink, 301);
    }
}

#[test]
fn new_profile_generation_keeps_its_closure() {
    if common::nix_available("new_profile_generation_keeps_its_closure") {
        root_added_between_plan_and_apply(NewRoot::Generation, 302);
    }
}

#[test]
fn process_holding_a_file_open_keeps_its_closure() {
    if common::nix_available("process_holding_a_file_open_keeps_its_closure") {
        root_added_between_plan_and_apply(NewRoot::OpenFile, 303);
    }
}

#[test]
fn locked_temp_root_keeps_its_closure() {
    if common::nix_available("locked_temp_root_keeps_its_closure") {
        root_added_between_plan_and_apply(NewRoot::TempRoot, 304);
    }
}

/// A planned-dead path gains a referrer after planning: a new build,
/// rooted by its `result` link (live), and another one left unrooted
/// (dead, but not in the plan, so what it references cannot go either).
#[test]
fn planned_path_with_a_new_referrer_is_kept() {
    if !common::nix_available("planned_path_with_a_new_referrer_is_kept") {
        return;
    }
    let b = built(305, 28, common::GcConf::default());
    let file = b.plan_file("plan.json");
    let plan = planned(&make_plan(&b.store, &file, &[]));
    let outs: Vec<String> = b
        .outputs()
        .into_iter()
        .filter(|p| plan.contains(p))
        .collect();
    assert!(outs.len() >= 2, "too few planned outputs: {outs:?}");
    let (d1, d2) = (&outs[0], &outs[outs.len() - 1]);

    let link = b.store.root().join("work/result");
    let (live_drv, live_ref) = b.build_referrer(d1, Some(&link));
    let (dead_drv, dead_ref) = b.build_referrer(d2, None);
    eprintln!("apply_nix: {live_ref} -> {d1} (rooted), {dead_ref} -> {d2} (unrooted)");

    // Kept: the planned paths Nix sees as live now, and what every path
    // the plan does not name keeps (by references, and its deriver under
    // keep-derivations). The paths that existed when planning were live,
    // so only the new ones add to it. (For the unrooted referrer that is
    // a little more than needed: its outputs' `.drv` could go.)
    let new_paths = BTreeSet::from([live_drv, live_ref.clone(), dead_ref.clone(), dead_drv]);
    let must = closure(&b.store, &new_paths);
    let keeps = liveness_closure(&b.store, &new_paths);
    assert!(must.contains(d1) && must.contains(d2));
    let dead_now = b.store.print_dead_valid();
    assert!(!dead_now.contains(d1), "Nix should see {d1} as live");
    let want = minus(&and(&plan, &dead_now), &keeps);
    let valid = b.store.valid_paths();

    let run = apply(&b.store, &file, &[]);
    let report = run.expect_code(0).report();
    let deleted = strs(&report["deleted"]);
    assert!(
        deleted.is_disjoint(&must),
        "deleted what a new referrer needs: {:#?}",
        and(&deleted, &must)
    );
    assert_same("deleted", &want, &deleted);
    let after = b.store.valid_paths();
    assert_same("valid after apply", &minus(&valid, &want), &after);
    assert!(after.contains(d1) && after.contains(d2) && after.contains(&live_ref));
    assert!(exists(&link), "the result link went");
    assert_verify_clean(&b.store, false);
}

/// A root that appears after apply's re-check, while it is about to call
/// Nix: Nix refuses the path as alive, apply drops it and what it keeps,
/// and deletes the rest.
#[test]
fn root_appearing_while_nix_deletes_is_honoured() {
    if !common::nix_available("root_appearing_while_nix_deletes_is_honoured") {
        return;
    }
    let b = built(306, 24, common::GcConf::default());
    let file = b.plan_file("plan.json");
    let plan = planned(&make_plan(&b.store, &file, &[]));
    let (p, keep) = b.richest_planned_output(&plan);
    let valid = b.store.valid_paths();

    let wrap = Wrap::new(&b.store);
    wrap.hold_before(1);
    let mut running = spawn_apply(&b.store, &file, Some(&wrap));
    running.wait_until("the first nix-store call", || wrap.started(1));
    assert_same("first batch", &plan, &wrap.paths(1));
    b.store.add_gcroot_link("late/while-deleting", &p);
    let dead_now = b.store.print_dead_valid();
    wrap.release_before(1);
    let run = running.finish();
    let report = run.expect_code(0).report();

    let want = and(&plan, &dead_now);
    assert_same("deleted", &want, &strs(&report["deleted"]));
    assert!(
        wrap.calls() >= 2,
        "Nix should have refused once and apply retried"
    );
    let skipped = strs(&report["skipped_live"]);
    assert!(
        skipped.contains(&p),
        "{p} not reported as live: {skipped:?}"
    );
    let after = b.store.valid_paths();
    assert_same("valid after apply", &minus(&valid, &want), &after);
    assert!(minus(&keep, &after).is_empty(), "the new root lost paths");
    assert!(b.store.print_dead_valid().is_empty());
    assert_verify_clean(&b.store, false);
}

// ---------------------------------------------------------------------------
// Expired roots

/// Sets a symlink's own mtime to `secs` ago.
fn age_link(link: &Path, secs: u64) {
    let when = format!("@{}", unix_now() - secs as i64);
    run_ok(
        std::process::Command::new("touch")
            .args(["-h", "-d", &when])
            .arg(link),
    );
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// The `gcroots/auto` entry that points at `link`.
fn auto_entry(store: &NixStore, link: &Path) -> PathBuf {
    let auto = store.gcroots_dir().join("auto");
    std::fs::read_dir(&auto)
        .expect("reading gcroots/auto")
        .flatten()
        .map(|e| e.path())
        .find(|e| std::fs::read_link(e).is_ok_and(|t| t == link))
        .unwrap_or_else(|| panic!("no gcroots/auto entry for {}", link.display()))
}

fn gen_link(profile: &Path, n: u32) -> PathBuf {
    let name = format!(
        "{}-{n}-link",
        profile.file_name().expect("profile name").to_string_lossy()
    );
    profile.with_file_name(name)
}

const EXPIRY_POLICY: &str = r#"
[[generations]]
profile = "profiles/p"
keep-newest = 1

[auto-roots]
older-than = "1d"
match = ["*/result*"]
"#;

/// A policy expires generations 1-3 of `profiles/p` (4 is current) and
/// an old `result` link's auto root. After planning, generation 1 is
/// pointed elsewhere and the profile is rolled back to generation 2:
/// both must stay. Generation 3 and the auto root go; the `result` link
/// itself stays.
#[test]
fn expired_roots_go_only_as_planned() {
    if !common::nix_available("expired_roots_go_only_as_planned") {
        return;
    }
    let b = built(401, 28, common::GcConf::default());
    let outs = b.outputs();
    let profile = b.profile();
    // Generation 1 exists; make 2, 3 and 4 (current).
    for (k, i) in [3usize, 7, 11].iter().enumerate() {
        b.store.set_profile(&profile, &outs[i % outs.len()]);
        assert!(exists(gen_link(&profile, k as u32 + 2)));
    }
    let drvs = b.dead_derivations();
    let new_result = b.store.nix_build_link(
        &b.real,
        &b.graph,
        drvs[drvs.len() - 1],
        "out",
        &b.store.root().join("work/new/result"),
    );
    // The old result's target is garbage once its root expires.
    let drvs = b.dead_derivations();
    let old_result = b.store.nix_build_link(
        &b.real,
        &b.graph,
        drvs[0],
        "out",
        &b.store.root().join("work/old/result"),
    );
    let old_auto = auto_entry(&b.store, &old_result);
    let new_auto = auto_entry(&b.store, &new_result);
    age_link(&old_result, 3 * 86_400);
    let old_target = std::fs::read_link(&old_result).expect("result link");
    let policy = b.store.root().join("policy.toml");
    std::fs::write(&policy, EXPIRY_POLICY).expect("writing the policy");

    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &["--policy", &policy.to_string_lossy()]);
    let expired: BTreeSet<String> = plan["expired_roots"]
        .as_array()
        .expect("expired_roots")
        .iter()
        .map(|e| e["link"].as_str().expect("link").to_string())
        .collect();
    let g = |n| gen_link(&profile, n).to_string_lossy().into_owned();
    let want_expired = BTreeSet::from([g(1), g(2), g(3), old_auto.to_string_lossy().into_owned()]);
    assert_same("expired roots in the plan", &want_expired, &expired);
    assert!(
        planned(&plan).contains(&*old_target.to_string_lossy()),
        "the old result's target should be planned (pick another seed)"
    );

    // Generation 1 now points elsewhere; the profile rolls back to 2.
    std::fs::remove_file(gen_link(&profile, 1)).expect("removing generation 1");
    std::os::unix::fs::symlink(&outs[5 % outs.len()], gen_link(&profile, 1))
        .expect("re-pointing generation 1");
    b.store.run(
        "nix-env",
        &[
            OsStr::new("-p"),
            profile.as_os_str(),
            OsStr::new("--switch-generation"),
            OsStr::new("2"),
        ],
    );

    // What the roots left after apply keep; the old result is not in it.
    let left: BTreeSet<String> = [
        gen_link(&profile, 1),
        gen_link(&profile, 2),
        gen_link(&profile, 4),
        new_result.clone(),
        b.store.gcroots_dir().join("kept"),
    ]
    .iter()
    .map(|l| {
        std::fs::read_link(l)
            .expect("root link")
            .to_string_lossy()
            .into_owned()
    })
    .collect();
    let keeps = liveness_closure(&b.store, &left);
    assert!(
        !keeps.contains(&*old_target.to_string_lossy()),
        "the old result's target is kept by another root (pick another seed)"
    );

    let run = apply(&b.store, &file, &[]);
    let report = run.expect_code(0).report();
    let removed = strs(&report["roots_removed"]);
    let want_removed = BTreeSet::from([g(3), old_auto.to_string_lossy().into_owned()]);
    assert_same("roots removed", &want_removed, &removed);
    assert!(exists(gen_link(&profile, 1)) && exists(gen_link(&profile, 2)));
    assert!(
        !exists(gen_link(&profile, 3)),
        "generation 3 should be gone"
    );
    assert!(
        exists(gen_link(&profile, 4)),
        "generation 4 was not expired"
    );
    assert_eq!(
        std::fs::read_link(&profile).expect("profile"),
        PathBuf::from("p-2-link")
    );
    assert!(!exists(&old_auto), "the old auto root should be gone");
    assert!(exists(&new_auto), "the young auto root should stay");
    // The user's own links stay (the old one now dangles: its target was
    // garbage once its auto root went).
    assert_eq!(
        std::fs::read_link(&old_result).ok(),
        Some(old_target.clone())
    );
    assert!(
        !exists(&old_target),
        "the old result's target should be deleted"
    );
    assert!(exists(&new_result) && std::fs::read_link(&new_result).is_ok());

    // Every root left holds a valid path, and nothing dead is left.
    for link in [
        gen_link(&profile, 1),
        gen_link(&profile, 2),
        gen_link(&profile, 4),
        new_result,
        b.store.gcroots_dir().join("kept"),
    ] {
        let t = std::fs::read_link(&link).expect("root link");
        assert!(
            exists(&t),
            "{} -> {} lost its target",
            link.display(),
            t.display()
        );
    }
    assert!(b.store.print_dead_valid().is_empty());
    assert_verify_clean(&b.store, false);

    // Why the other two stayed.
    let why = |link: &str| -> String {
        report["roots_kept"]
            .as_array()
            .expect("roots_kept")
            .iter()
            .find(|p| p[0] == link)
            .map(|p| p[1].as_str().expect("reason").to_string())
            .unwrap_or_else(|| panic!("{link} not reported as kept: {}", run.show()))
    };
    assert!(why(&g(1)).starts_with("now points to"), "{}", why(&g(1)));
    assert!(why(&g(2)).contains("current generation"), "{}", why(&g(2)));
    assert_eq!(
        report["roots_kept"].as_array().map(Vec::len),
        Some(2),
        "only generations 1 and 2 are kept: {}",
        run.show()
    );
}

/// Nix 2.8's `nix-env` registers every generation link in `gcroots/auto`
/// too, so the root scanner meets each generation twice. The plan must
/// still list an expired generation once, the dry run must report it
/// removed once, and the real run must not report a link it removed as
/// also kept ("gone already").
#[test]
fn expired_generation_is_listed_and_reported_once() {
    if !common::nix_available("expired_generation_is_listed_and_reported_once") {
        return;
    }
    let b = built(403, 12, common::GcConf::default());
    let outs = b.outputs();
    let profile = b.profile();
    b.store.set_profile(&profile, &outs[outs.len() - 1]);
    let policy = b.store.root().join("policy.toml");
    std::fs::write(&policy, EXPIRY_POLICY).expect("writing the policy");
    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &["--policy", &policy.to_string_lossy()]);
    let gen1 = gen_link(&profile, 1).to_string_lossy().into_owned();
    let listed: Vec<&str> = plan["expired_roots"]
        .as_array()
        .expect("expired_roots")
        .iter()
        .map(|e| e["link"].as_str().expect("link"))
        .collect();
    let dry = apply(&b.store, &file, &["--dry-run"]);
    let dry_report = dry.expect_code(0).report();
    let real = apply(&b.store, &file, &[]);
    let report = real.expect_code(0).report();
    assert_eq!(listed, vec![gen1.as_str()], "expired roots in the plan");
    assert_eq!(
        dry_report["roots_removed"],
        Value::from(vec![gen1.clone()]),
        "{}",
        dry.show()
    );
    assert_eq!(
        report["roots_removed"],
        Value::from(vec![gen1.clone()]),
        "{}",
        real.show()
    );
    assert_eq!(
        report["roots_kept"],
        Value::Array(vec![]),
        "{}",
        real.show()
    );
}

/// `nix-build -o result` again after planning, for another derivation:
/// the auto entry reads the same text (the `result` link's path), but it
/// is a fresh root of a new build and must not be removed as expired.
#[test]
fn rebuilt_result_link_keeps_its_auto_root() {
    if !common::nix_available("rebuilt_result_link_keeps_its_auto_root") {
        return;
    }
    let b = built(402, 20, common::GcConf::default());
    let drvs = b.dead_derivations();
    let link = b.store.root().join("work/result");
    let result = b
        .store
        .nix_build_link(&b.real, &b.graph, drvs[0], "out", &link);
    let auto = auto_entry(&b.store, &result);
    age_link(&result, 3 * 86_400);
    let policy = b.store.root().join("policy.toml");
    std::fs::write(&policy, EXPIRY_POLICY).expect("writing the policy");
    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &["--policy", &policy.to_string_lossy()]);
    assert_eq!(
        plan["expired_roots"][0]["link"].as_str(),
        Some(&*auto.to_string_lossy())
    );

    // The user builds something else into the same link.
    let rebuilt = b
        .store
        .nix_build_link(&b.real, &b.graph, drvs[drvs.len() - 1], "out", &link);
    let new_target = std::fs::read_link(&rebuilt).expect("result link");
    assert_eq!(auto_entry(&b.store, &rebuilt), auto, "same auto entry name");
    let run = apply(&b.store, &file, &[]);
    run.expect_code(0);
    assert!(
        exists(&auto),
        "the auto root of the new build was removed as expired: {}",
        run.show()
    );
    let dead = b.store.print_dead_valid();
    assert!(
        !dead.contains(&*new_target.to_string_lossy()),
        "the new build is garbage now"
    );
    assert!(exists(&new_target));
}

// ---------------------------------------------------------------------------
// Refusals

/// Every bad plan is refused with exit 2 and one line naming the file,
/// and neither the store nor the state dir changes.
#[test]
fn bad_plans_are_refused_and_nothing_changes() {
    if !common::nix_available("bad_plans_are_refused_and_nothing_changes") {
        return;
    }
    let b = built(501, 14, common::GcConf::default());
    let good = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &good, &[]);
    assert!(!planned(&plan).is_empty());
    let text = std::fs::read_to_string(&good).expect("plan text");

    // Another store with garbage of its own, and its plan.
    let other = NixStore::new();
    other.add_text("other", "other\n");
    let foreign = b.plan_file("foreign.json");
    make_plan(&other, &foreign, &[]);

    let write = |name: &str, v: &Value| {
        let f = b.plan_file(name);
        std::fs::write(&f, serde_json::to_string_pretty(v).expect("json")).expect("write");
        f
    };
    let truncated = b.plan_file("truncated.json");
    std::fs::write(&truncated, &text[..text.len() / 2]).expect("write");
    let empty = b.plan_file("empty.json");
    std::fs::write(&empty, "").expect("write");
    let mut v = plan.clone();
    v["created"] = Value::from("2000-01-01T00:00:00Z");
    let old = write("old.json", &v);
    let mut v = plan.clone();
    v["created"] = Value::from("2999-01-01T00:00:00Z");
    let future = write("future.json", &v);
    let mut v = plan.clone();
    v["version"] = Value::from(99);
    let version = write("version.json", &v);
    let mut v = plan.clone();
    v["delete"][0]["path"] = Value::from("/elsewhere/store/00000000000000000000000000000000-x");
    let outside = write("outside.json", &v);
    let missing = b.plan_file("no-such-plan.json");

    let before_store = Snapshot::of(&b.store.store_dir);
    let before_state = b.store.state_snapshot();
    let cases: Vec<(&Path, Vec<&str>)> = vec![
        (&truncated, vec![]),
        (&empty, vec![]),
        (&foreign, vec![]),
        (&old, vec![]),
        (&future, vec![]),
        (&version, vec![]),
        (&outside, vec![]),
        (&missing, vec![]),
        (&truncated, vec!["--dry-run"]),
        (&foreign, vec!["--dry-run"]),
    ];
    for (f, extra) in &cases {
        apply(&b.store, f, extra).expect_refused(f);
    }
    // Stale by --max-plan-age.
    std::thread::sleep(Duration::from_millis(2100));
    apply(&b.store, &good, &["--max-plan-age", "1s"]).expect_refused(&good);

    let d = before_store.diff(&Snapshot::of(&b.store.store_dir));
    assert!(d.is_empty(), "a refused plan changed the store:\n{d}");
    let d = before_state.diff(&b.store.state_snapshot());
    assert!(d.is_empty(), "a refused plan changed the state dir:\n{d}");

    // The good plan still applies.
    apply(&b.store, &good, &[]).expect_code(0);
}

/// Two applies on one store never run at once: while the apply lock is
/// held (by the test, then by a running apply) the second one is refused
/// with exit 2, naming the lock, and changes nothing.
#[test]
fn second_apply_is_refused_while_the_lock_is_held() {
    if !common::nix_available("second_apply_is_refused_while_the_lock_is_held") {
        return;
    }
    use std::os::fd::AsRawFd;
    let b = built(601, 14, common::GcConf::default());
    let file = b.plan_file("plan.json");
    let plan = planned(&make_plan(&b.store, &file, &[]));
    let lock_dir = b.store.state_dir.join("storegc");
    let lock = lock_dir.join("apply.lock");
    std::fs::create_dir_all(&lock_dir).expect("creating the lock folder");
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .expect("opening the lock");
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "taking the apply lock");

    let before = Snapshot::of(&b.store.store_dir);
    apply(&b.store, &file, &[]).expect_refused(&lock);
    let d = before.diff(&Snapshot::of(&b.store.store_dir));
    assert!(d.is_empty(), "a refused apply changed the store:\n{d}");
    // A dry run deletes nothing, so it needs no lock.
    apply(&b.store, &file, &["--dry-run"]).expect_code(0);
    drop(held);

    // Now a real apply holds it, stopped inside its nix-store call.
    let wrap = Wrap::new(&b.store);
    wrap.hold_before(1);
    let mut first = spawn_apply(&b.store, &file, Some(&wrap));
    first.wait_until("the first nix-store call", || wrap.started(1));
    let second = apply(&b.store, &file, &[]);
    second.expect_refused(&lock);
    wrap.release_before(1);
    let run = first.finish();
    let report = run.expect_code(0).report();
    assert_same(
        "deleted by the first apply",
        &plan,
        &strs(&report["deleted"]),
    );
    assert!(b.store.print_dead_valid().is_empty());
}

/// SIGKILL to apply and its nix-store, first right after a batch (before
/// apply sees Nix's answer), then in the middle of Nix's deletions; each
/// time the store stays valid for Nix, and a last apply finishes the job.
#[test]
fn sigkill_between_and_inside_batches_then_apply_finishes() {
    if !common::nix_available("sigkill_between_and_inside_batches_then_apply_finishes") {
        return;
    }
    let big = big(701);

    // Between batches: the first nix-store call has finished.
    let wrap = Wrap::new(&big.store);
    wrap.hold_after(1);
    let mut running = spawn_apply(&big.store, &big.file, Some(&wrap));
    running.wait_until("the first batch", || wrap.done(1));
    let run = running.kill_group();
    assert_eq!(
        run.code,
        None,
        "apply should die by SIGKILL: {}",
        run.show()
    );
    let first = wrap.paths(1);
    assert_eq!(wrap.calls(), 1);
    assert!(
        first.len() < big.plan.len(),
        "one batch holds the whole plan ({} paths): make paths longer",
        first.len()
    );
    assert_eq!(big.gone(&first), first.len(), "the first batch is not done");
    let rest = minus(&big.plan, &first);
    assert!(
        big.store.invalid_among(&rest).is_empty(),
        "paths beyond the first batch went"
    );
    assert_verify_clean(&big.store, false);

    // Inside a batch: kill once Nix has deleted some of its paths.
    let wrap = Wrap::new(&big.store);
    let mut running = spawn_apply(&big.store, &big.file, Some(&wrap));
    running.wait_until("the next nix-store call", || wrap.started(1));
    let batch = wrap.paths(1);
    assert!(
        first.is_disjoint(&batch),
        "deleted paths were given to Nix again"
    );
    running.wait_until("Nix's first deletion", || batch.iter().any(|p| !exists(p)));
    running.kill_group();
    let gone = big.gone(&batch);
    eprintln!(
        "apply_nix: killed inside a batch after {gone} of {} deletions",
        batch.len()
    );
    assert!(gone < batch.len(), "Nix finished the batch before the kill");
    assert_verify_clean(&big.store, false);

    let report = big.finish();
    let deleted = strs(&report["deleted"]);
    assert!(deleted.is_subset(&big.plan));
    assert!(report["already_gone"].as_u64() >= Some(first.len() as u64));
}

/// SIGKILL to apply and nix-store in the middle of Nix's deletions on a
/// store of real builds, so `--verify --check-contents` can check every
/// path left; a second apply finishes.
#[test]
fn sigkill_inside_nix_delete_keeps_contents_valid() {
    if !common::nix_available("sigkill_inside_nix_delete_keeps_contents_valid") {
        return;
    }
    let b = built(702, 60, common::GcConf::default());
    let live = b.store.print_live();
    let file = b.plan_file("plan.json");
    let plan = planned(&make_plan(&b.store, &file, &[]));
    let wrap = Wrap::new(&b.store);
    let mut running = spawn_apply(&b.store, &file, Some(&wrap));
    running.wait_until("the nix-store call", || wrap.started(1));
    let batch = wrap.paths(1);
    running.wait_until("Nix's first deletion", || batch.iter().any(|p| !exists(p)));
    running.kill_group();
    let gone = batch.iter().filter(|p| !exists(p)).count();
    eprintln!(
        "apply_nix: killed inside Nix after {gone} of {} deletions",
        batch.len()
    );
    assert!(gone < batch.len(), "Nix finished before the kill");
    assert_verify_clean(&b.store, true);

    let run = apply(&b.store, &file, &[]);
    let report = run.expect_code(0).report();
    assert!(strs(&report["deleted"]).is_subset(&plan));
    assert_only_live_left(&b.store, &live);
    assert_verify_clean(&b.store, true);
}

/// SIGTERM to apply alone while Nix deletes the first batch: that batch
/// completes, apply stops before the next one with exit 1 and says it
/// was interrupted; a second apply finishes.
#[test]
fn sigterm_stops_after_the_current_batch() {
    if !common::nix_available("sigterm_stops_after_the_current_batch") {
        return;
    }
    let big = big(703);
    let wrap = Wrap::new(&big.store);
    wrap.hold_before(1);
    let mut running = spawn_apply(&big.store, &big.file, Some(&wrap));
    running.wait_until("the first nix-store call", || wrap.started(1));
    running.signal(libc::SIGTERM);
    wrap.release_before(1);
    let run = running.finish();
    let report = run.expect_code(1).report();
    assert_eq!(report["interrupted"], Value::Bool(true), "{}", run.show());
    assert_eq!(report["failed"], Value::Array(vec![]), "{}", run.show());
    assert_eq!(wrap.calls(), 1, "apply went on after SIGTERM");
    let first = wrap.paths(1);
    assert!(first.len() < big.plan.len(), "only one batch");
    assert_same("deleted", &first, &strs(&report["deleted"]));
    assert_eq!(big.gone(&first), first.len());
    assert!(big
        .store
        .invalid_among(&minus(&big.plan, &first))
        .is_empty());
    assert_verify_clean(&big.store, false);
    let report = big.finish();
    assert_eq!(report["already_gone"].as_u64(), Some(first.len() as u64));
}

/// Ctrl-C in a terminal sends SIGINT to the whole foreground group, so
/// nix-store is interrupted mid-batch too: apply must still stop with
/// exit 1, report the interruption, leave a valid store, and a second
/// apply must finish.
#[test]
fn ctrl_c_to_the_process_group_stops_safely() {
    if !common::nix_available("ctrl_c_to_the_process_group_stops_safely") {
        return;
    }
    let big = big(704);
    let wrap = Wrap::new(&big.store);
    let mut running = spawn_apply(&big.store, &big.file, Some(&wrap));
    running.wait_until("the first nix-store call", || wrap.started(1));
    let batch = wrap.paths(1);
    running.wait_until("Nix's first deletion", || batch.iter().any(|p| !exists(p)));
    running.signal_group(libc::SIGINT);
    let run = running.finish();
    let report = run.expect_code(1).report();
    assert_eq!(report["interrupted"], Value::Bool(true), "{}", run.show());
    // Said at once, not only in the final report.
    assert!(
        run.stderr
            .contains("interrupted: stopping after the current batch"),
        "{}",
        run.show()
    );
    // Nix stopped mid-batch; what it did not get to is listed as failed,
    // with Nix's reason, and nothing else failed.
    let failed = report["failed"].as_array().expect("failed");
    eprintln!(
        "apply_nix: Ctrl-C after {} deletions; {} reported failed",
        report["deleted"].as_array().map_or(0, Vec::len),
        failed.len()
    );
    for f in failed {
        assert!(
            f["error"]
                .as_str()
                .is_some_and(|e| e.contains("interrupted")),
            "{f}"
        );
    }
    assert_eq!(wrap.calls(), 1, "apply went on after SIGINT");
    assert_verify_clean(&big.store, false);
    big.finish();
}

// ---------------------------------------------------------------------------
// Dry runs

/// `--dry-run` deletes nothing and removes no root, and reports exactly
/// what the real run then deletes and removes.
#[test]
fn dry_run_changes_nothing_and_predicts_the_real_run() {
    if !common::nix_available("dry_run_changes_nothing_and_predicts_the_real_run") {
        return;
    }
    let b = built(801, 24, common::GcConf::default());
    let outs = b.outputs();
    let profile = b.profile();
    b.store.set_profile(&profile, &outs[outs.len() / 2]);
    b.store.set_profile(&profile, &outs[outs.len() - 1]);
    let drvs = b.dead_derivations();
    let result = b.store.nix_build_link(
        &b.real,
        &b.graph,
        drvs[drvs.len() / 2],
        "out",
        &b.store.root().join("work/result"),
    );
    age_link(&result, 3 * 86_400);
    let policy = b.store.root().join("policy.toml");
    std::fs::write(&policy, EXPIRY_POLICY).expect("writing the policy");
    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &["--policy", &policy.to_string_lossy()]);
    let expired: BTreeSet<&str> = plan["expired_roots"]
        .as_array()
        .expect("expired_roots")
        .iter()
        .map(|e| e["link"].as_str().expect("link"))
        .collect();
    assert_eq!(expired.len(), 3, "{expired:#?}");
    // A root added after planning, so the dry run has to re-check too.
    let (p, _) = b.richest_planned_output(&planned(&plan));
    b.store.add_gcroot_link("late/new", &p);

    let store_before = Snapshot::of(&b.store.store_dir);
    let state_before = b.store.state_snapshot();
    let dry = apply(&b.store, &file, &["--dry-run"]);
    let dry_report = dry.expect_code(0).report();
    assert_eq!(dry_report["dry_run"], Value::Bool(true));
    let d = store_before.diff(&Snapshot::of(&b.store.store_dir));
    assert!(d.is_empty(), "--dry-run changed the store:\n{d}");
    let db_dir = b.store.state_dir.join("db");
    let d = state_before
        .ignoring_sqlite_index_in(&db_dir)
        .diff(&b.store.state_snapshot().ignoring_sqlite_index_in(&db_dir));
    assert!(d.is_empty(), "--dry-run changed the state dir:\n{d}");
    let would = strs(&dry_report["deleted"]);
    assert!(!would.is_empty() && !would.contains(&p));
    assert_eq!(
        strs(&dry_report["roots_removed"]).len(),
        3,
        "{}",
        dry.show()
    );

    let real = apply(&b.store, &file, &[]);
    let report = real.expect_code(0).report();
    assert_same("deleted vs dry run", &would, &strs(&report["deleted"]));
    assert_same(
        "roots removed vs dry run",
        &strs(&dry_report["roots_removed"]),
        &strs(&report["roots_removed"]),
    );
    assert_eq!(
        dry_report["roots_removed"], report["roots_removed"],
        "the dry run reports other root removals than the real run"
    );
    assert_eq!(
        dry_report["roots_kept"], report["roots_kept"],
        "the dry run reports other kept roots than the real run"
    );
    assert_same(
        "kept live vs dry run",
        &strs(&dry_report["skipped_live"]),
        &strs(&report["skipped_live"]),
    );
    assert_eq!(
        dry_report["deleted_nar_bytes"], report["deleted_nar_bytes"],
        "narSize totals differ"
    );
    assert!(b.store.print_dead_valid().is_empty());
    assert_verify_clean(&b.store, false);
}
