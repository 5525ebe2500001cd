# Evaluates nix/module.nix, nix/example-nix-cache02.nix and
# nix/package.nix against a small stand-in for nixpkgs' lib, pkgs and the
# module system, with plain Nix (nix-instantiate --eval, no nixpkgs: the
# machines that check this have no network). It catches what parsing
# cannot: a wrong relative path, an option used but not declared, a unit
# setting lost in a merge, an assertion that fails for the shipped
# example, a value of the wrong type for one of the module's own options
# (types are checks here: every option's value, set or default, must pass
# its type, nested options included, and setting an option that does not
# exist is an error; see typeCases). It is not the NixOS module system:
# other modules' options are not declared or checked, priorities (mkForce,
# mkDefault) do not exist, and a module is evaluated once against its own
# defaults; nix/check.sh evaluates the example with the real
# <nixpkgs/nixos> when a nixpkgs tree is there.
#
#   nix-instantiate --eval --strict --json nix/tests/eval.nix
#
# prints the option names of services.storegc (nested ones dotted), the
# example's policy as the module renders it and the wrong-type cases tried
# (tests/deploy_files.rs checks them), or throws naming the check that
# failed.
let
  inherit (builtins)
    all
    attrNames
    attrValues
    concatStringsSep
    elem
    filter
    foldl'
    isAttrs
    isBool
    isInt
    isList
    isPath
    isString
    listToAttrs
    mapAttrs
    pathExists
    substring
    stringLength
    ;

  check = name: ok: if ok then true else throw "nix/tests/eval.nix: check failed: ${name}";

  # Module-system stand-ins: mkIf/mkMerge resolve at once, attribute sets
  # merge recursively and lists concatenate (as for systemd settings).
  merge =
    a: b:
    if isAttrs a && isAttrs b then
      a // mapAttrs (n: v: if a ? ${n} then merge a.${n} v else v) b
    else if isList a && isList b then
      a ++ b
    else
      b;
  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  removePrefix =
    p: s:
    if substring 0 (stringLength p) s == p then
      substring (stringLength p) (stringLength s) s
    else
      s;
  recursiveUpdate =
    a: b:
    a
    // mapAttrs (n: v: if isAttrs v && a ? ${n} && isAttrs a.${n} then recursiveUpdate a.${n} v else v) b;
  # Option types as checks: a value set in a test config (or an option's
  # default) that its type refuses throws, naming the option, as the real
  # module system's "is not of type" error does.
  type = name: check: { inherit name check; };
  types = {
    str = type "string" isString;
    bool = type "boolean" isBool;
    # A string starting with "/" or a Nix path, as nixpkgs' types.path.
    path = type "path" (x: isPath x || (isString x && substring 0 1 x == "/"));
    # A derivation, or (as the stand-in's callPackage gives) a store path.
    package = type "package" (x: (isAttrs x && x ? outPath) || (isString x && substring 0 11 x == "/nix/store/"));
    lines = type "lines" isString;
    ints.positive = type "positive integer, meaning >0" (x: isInt x && x > 0);
    nullOr = t: type "null or ${t.name}" (x: x == null || t.check x);
    listOf = t: type "list of ${t.name}" (x: isList x && all t.check x);
    attrsOf = t: type "attribute set of ${t.name}" (x: isAttrs x && all t.check (attrValues x));
    either = a: b: type "${a.name} or ${b.name}" (x: a.check x || b.check x);
    enum = vs: type "one of ${builtins.concatStringsSep ", " (map builtins.toJSON vs)}" (x: builtins.elem x vs);
  };
  isOption = o: isAttrs o && (o._type or null) == "option";

  lib = {
    inherit recursiveUpdate removePrefix unique types;
    mkOption = o: o // { _type = "option"; };
    mkEnableOption = d: {
      _type = "option";
      type = types.bool;
      default = false;
      description = d;
    };
    mkIf = c: x: if c then x else { };
    mkMerge = foldl' merge { };
    literalExpression = x: x;
    genAttrs =
      names: f:
      listToAttrs (
        map (n: {
          name = n;
          value = f n;
        }) names
      );
    mapAttrs' = f: set: listToAttrs (map (n: f n set.${n}) (attrNames set));
    nameValuePair = name: value: { inherit name value; };
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: x: if c then x else [ ];
    optionalAttrs = c: x: if c then x else { };
    optionalString = c: s: if c then s else "";
    importTOML = f: builtins.fromTOML (builtins.readFile f);
    fileset = {
      unions =
        paths:
        if all pathExists paths then paths else throw "fileset: missing ${toString (filter (p: !pathExists p) paths)}";
      toSource = { root, fileset }: root;
    };
    licenses = {
      mit = "mit";
      asl20 = "asl20";
    };
    platforms.linux = [ "x86_64-linux" ];
  };

  # canExecute: whether the build platform runs the host's binaries (if
  # not, the module skips `storegc policy check` and uses the generated
  # TOML as is, which lets the test read the policy back).
  stdenvWith = canExecute: {
    buildPlatform.canExecute = _: canExecute;
    hostPlatform = { };
  };
  stdenv = stdenvWith true;
  pkgsWith = canExecute: {
    stdenv = stdenvWith canExecute;
    formats.toml = _: {
      type = type "TOML value" isAttrs;
      generate = name: value: {
        inherit name value;
        outPath = "/nix/store/stub-${name}";
      };
    };
    callPackage = f: args: "/nix/store/stub-storegc";
    writeShellApplication = a: "/nix/store/stub-${a.name}-${toString (stringLength a.text)}";
    runCommand = name: env: script: {
      inherit name script;
    };
    coreutils = "/nix/store/stub-coreutils";
  };
  # NixOS's utils.escapeSystemdPath, rewritten from its rules: leading and
  # trailing "/" dropped, "/" becomes "-", a leading "." and each of
  # ` !"#$%&'()*+,;<=>@[\]^`{|}~-` become `\xNN`. tests/deploy_files.rs
  # checks the unit names it yields against `systemd-escape --path`.
  hex = {
    " " = "20"; "!" = "21"; "\"" = "22"; "#" = "23"; "$" = "24"; "%" = "25";
    "&" = "26"; "'" = "27"; "(" = "28"; ")" = "29"; "*" = "2a"; "+" = "2b";
    "," = "2c"; "-" = "2d"; "." = "2e"; ";" = "3b"; "<" = "3c"; "=" = "3d";
    ">" = "3e"; "@" = "40"; "[" = "5b"; "\\" = "5c"; "]" = "5d"; "^" = "5e";
    "`" = "60"; "{" = "7b"; "|" = "7c"; "}" = "7d"; "~" = "7e";
  };
  chars = s: builtins.genList (i: substring i 1 s) (stringLength s);
  trimSlashes =
    s:
    let
      noLead = if substring 0 1 s == "/" then trimSlashes (substring 1 (stringLength s) s) else s;
      n = stringLength noLead;
    in
    if n > 0 && substring (n - 1) 1 noLead == "/" then trimSlashes (substring 0 (n - 1) noLead) else noLead;
  escapeChar =
    i: c:
    if c == "/" then
      "-"
    else if (c != "." || i == 0) && hex ? ${c} then
      "\\x${hex.${c}}"
    else
      c;
  escapeSystemdPath =
    s:
    let
      t = trimSlashes s;
    in
    if t == "" then "-" else concatStringsSep "" (builtins.genList (i: escapeChar i (builtins.elemAt (chars t) i)) (stringLength t));
  utils = {
    escapeSystemdExecArgs = concatStringsSep " ";
    inherit escapeSystemdPath;
  };

  # The value of every option under `opts` (nested sets of options, as
  # lowDisk), from `settings` or else the default, each checked against its
  # type; a setting that names no option throws, as in NixOS.
  configOf =
    prefix: opts: settings:
    let
      unknown = filter (n: !(opts ? ${n})) (attrNames settings);
      value =
        n: o:
        let
          v = if settings ? ${n} then settings.${n} else o.default or null;
        in
        if !(o ? type) || o.type.check v then
          v
        else
          throw "nix/tests/eval.nix: ${prefix}${n}: ${builtins.toJSON v} is not of type ${o.type.name}";
    in
    if unknown != [ ] then
      throw "nix/tests/eval.nix: ${prefix}${builtins.head unknown} does not exist"
    else
      mapAttrs (n: o: if isOption o then value n o else configOf "${prefix}${n}." o (settings.${n} or { })) opts;
  # The names of the options under `opts`, nested ones dotted.
  namesOf =
    prefix: opts:
    builtins.concatLists (
      map (n: if isOption opts.${n} then [ "${prefix}${n}" ] else namesOf "${prefix}${n}." opts.${n}) (attrNames opts)
    );

  # One evaluation of a module against the defaults of its options and the
  # given settings of services.storegc.
  evalModuleWith =
    canExecute: settings:
    let
      module = import ../module.nix {
        inherit lib utils config;
        pkgs = pkgsWith canExecute;
      };
      config = {
        services.storegc = configOf "services.storegc." module.options.services.storegc settings;
        nix = {
          enable = true;
          package = "/nix/store/stub-nix";
          gc.automatic = false;
          settings = { };
        };
      };
    in
    module // { inherit config; result = module.config; };
  evalModule = evalModuleWith true;

  example = import ../example-nix-cache02.nix { };
  cache02 = (evalModule example.services.storegc).result;
  svc = cache02.systemd.services.storegc;
  preview = cache02.systemd.services.storegc-preview;
  runner = cache02.systemd.services."gitea-runner-actions\\x2dnative";
  # Runner instance names and the units the module gives the closure-list
  # rights to (checked against systemd-escape by tests/deploy_files.rs).
  runnerNames = [
    "actions-native"
    "plain"
    "a_b.c"
    ".hidden"
    "x y"
    "nix-ci-2"
  ];
  runnerUnits = filter (n: substring 0 12 n == "gitea-runner") (
    attrNames (evalModule (example.services.storegc // { closureListRunners = runnerNames; })).result.systemd.services
  );
  optionNames = namesOf "" (evalModule { }).options.services.storegc;
  # The policy attrset as the module renders it, closureLists included.
  examplePolicy =
    (evalModuleWith false example.services.storegc).result.environment.etc."storegc/policy.toml".source.value;

  lowDisk = cache02.systemd.services.storegc-low-disk;

  # Wrong types in a test config are evaluation errors, each beside the
  # same setting with the right type, which is accepted (so the error is
  # the type's, not another one).
  typeCases = [
    { bad = { enable = "yes"; }; good = { enable = true; }; }
    { bad = { keepReports = 0; }; good = { keepReports = 1; }; }
    { bad = { keepReports = "30"; }; good = { keepReports = 30; }; }
    { bad = { closureLists = "/var/lib/storegc/x.txt"; }; good = { closureLists = [ "/var/lib/storegc/x.txt" ]; }; }
    { bad = { extraArgs = [ 1 ]; }; good = { extraArgs = [ "1" ]; }; }
    { bad = { startAt = 430; }; good = { startAt = [ "04:30" ]; }; }
    { bad = { startAt = [ "04:30" 5 ]; }; good = { startAt = [ "04:30" "05:00" ]; }; }
    { bad = { policy = "nix-cache.toml"; }; good = { policy = { }; }; }
    { bad = { deleteThroughDaemon = "true"; }; good = { deleteThroughDaemon = true; }; }
    { bad = { extraPolicies.low-disk = 3; }; good = { extraPolicies.low-disk = ./../../policies/low-disk.toml; }; }
    { bad = { lowDisk.enable = 1; }; good = { lowDisk.enable = true; }; }
    { bad = { lowDisk.below = 10; }; good = { lowDisk.below = "10"; }; }
    { bad = { lowDisk.policy = true; }; good = { lowDisk.policy = ./../../policies/low-disk.toml; }; }
    { bad = { lowDisk = { enable = true; interval = 5; }; }; good = { lowDisk = { enable = true; interval = "5min"; }; }; }
    { bad = { lowDisk.bellow = "10%"; }; good = { lowDisk.below = "10%"; }; }
    { bad = { metricsDirectory = "/x"; }; good = { }; }
    { bad = { metricsDir = 5; }; good = { metricsDir = "/var/lib/node-exporter"; }; }
    { bad = { metricsDir = [ "/x" ]; }; good = { metricsDir = null; }; }
    { bad = { deleteWith = "rm"; }; good = { deleteWith = "nix-store"; }; }
    { bad = { deleteWith = true; }; good = { deleteWith = "storegc"; }; }
  ];
  accepted =
    settings:
    (builtins.tryEval (builtins.deepSeq (evalModule (example.services.storegc // settings)).config.services.storegc true)).success;

  pkg = import ../package.nix {
    inherit lib stdenv;
    rustPlatform.buildRustPackage = a: a;
    installShellFiles = "/nix/store/stub-installShellFiles";
  };
  cargo = lib.importTOML ../../Cargo.toml;

  checks = [
    (check "example imports the module" (elem ./../module.nix example.imports))
    (check "disabled: no config" ((evalModule { }).result == { }))
    (check "example assertions hold" (all (a: a.assertion) cache02.assertions))
    (check "policy and policyFile both set fail" (
      !(all (a: a.assertion) (evalModule (example.services.storegc // { policyFile = ./../../policies/nix-cache.toml; })).result.assertions)
    ))
    (check "closureLists reach the policy's closure-lists" (
      cache02.environment.etc."storegc/policy.toml".source.name == "storegc-policy.toml"
    ))
    (check "low-disk policy installed for manual runs" (cache02.environment.etc ? "storegc/low-disk.toml"))
    (check "oneshot" (svc.serviceConfig.Type == "oneshot"))
    (check "ExecStart runs the nightly script with extraArgs" (
      svc.serviceConfig.ExecStart == "/nix/store/stub-storegc-nightly-${toString (stringLength (removePrefix "#!/usr/bin/env bash\n" (builtins.readFile ../storegc-nightly.sh)))}/bin/storegc-nightly --threads 1"
    ))
    (check "startAt" (svc.startAt == "04:30"))
    (check "timer is persistent with a random delay" (
      cache02.systemd.timers.storegc.timerConfig == {
        Persistent = true;
        RandomizedDelaySec = "30min";
      }
    ))
    (check "environment" (
      svc.environment.STOREGC_POLICY == "/etc/storegc/policy.toml"
      && svc.environment.STOREGC_REPORT_DIR == "/var/log/storegc"
      && svc.environment.STOREGC_KEEP_REPORTS == "30"
      && svc.environment.STOREGC_MAX_PLAN_AGE == "1h"
      && svc.environment.STOREGC_DELETE_WITH == "storegc"
      && !(svc.environment ? NIX_REMOTE)
    ))
    (check "hardening keeps what a GC needs" (
      svc.serviceConfig.ProtectSystem == "strict"
      && svc.serviceConfig.ProtectHome == "read-only"
      && svc.serviceConfig.PrivateTmp == false
      && !(svc.serviceConfig ? ProtectProc)
      && !(svc.serviceConfig ? ProcSubset)
      && !(svc.serviceConfig ? DynamicUser)
      && svc.serviceConfig.PrivateNetwork
      && svc.serviceConfig.RestrictAddressFamilies == [ "AF_UNIX" ]
      # storegc's engine (the default): exactly one capability more,
      # CAP_SYS_ADMIN, for the private remount of the read-only store.
      && svc.serviceConfig.CapabilityBoundingSet == [
        "CAP_SYS_PTRACE"
        "CAP_DAC_READ_SEARCH"
        "CAP_DAC_OVERRIDE"
        "CAP_FOWNER"
        "CAP_SYS_ADMIN"
      ]
      && svc.serviceConfig.RestrictNamespaces == [ "mnt" ]
      && elem "@mount" svc.serviceConfig.SystemCallFilter
      && svc.serviceConfig.ReadWritePaths == [
        "/nix/var/nix"
        "/var/log/storegc"
        "/nix/store"
      ]
    ))
    (check "nix-store through the daemon: no remount, store read-only" (
      let
        s = (evalModule (example.services.storegc // { deleteWith = "nix-store"; })).result.systemd.services.storegc;
      in
      s.environment.NIX_REMOTE == "daemon"
      && s.environment.STOREGC_DELETE_WITH == "nix-store"
      && !(elem "CAP_SYS_ADMIN" s.serviceConfig.CapabilityBoundingSet)
      && s.serviceConfig.RestrictNamespaces == true
      && s.serviceConfig.ReadWritePaths == [
        "/nix/var/nix"
        "/var/log/storegc"
      ]
    ))
    (check "local nix-store deletion: writable store, remount allowed" (
      let
        s = (evalModule (example.services.storegc // { deleteWith = "nix-store"; deleteThroughDaemon = false; })).result.systemd.services.storegc;
      in
      elem "/nix/store" s.serviceConfig.ReadWritePaths
      && elem "CAP_SYS_ADMIN" s.serviceConfig.CapabilityBoundingSet
      && s.serviceConfig.RestrictNamespaces == [ "mnt" ]
      && !(s.environment ? NIX_REMOTE)
    ))
    (check "state folder for the CI group, reports root-owned" (
      cache02.systemd.tmpfiles.rules == [
        "d /var/lib/storegc 2775 root storegc - -"
        "d /var/log/storegc 0755 root root - -"
      ]
      && cache02.users.groups ? storegc
    ))
    (check "runner may write the closure list, under the unit name NixOS gives it" (
      attrNames cache02.systemd.services == [ "gitea-runner-actions\\x2dnative" "storegc" "storegc-low-disk" "storegc-preview" ]
      && runner.serviceConfig.SupplementaryGroups == [ "storegc" ]
      && runner.serviceConfig.ReadWritePaths == [ "-/var/lib/storegc" ]
    ))
    (check "preview watches the list and plans only" (
      cache02.systemd.paths.storegc-preview.pathConfig.PathChanged == [
        "/var/lib/storegc/nixos-configurations.txt"
      ]
      && preview.serviceConfig.CapabilityBoundingSet == [
        "CAP_SYS_PTRACE"
        "CAP_DAC_READ_SEARCH"
      ]
      && substring 0 30 (toString (lib.removePrefix "/nix/store/stub-storegc-preview-" preview.serviceConfig.ExecStart)) != ""
    ))
    (check "low-disk: the nightly script below the threshold, the run's own policy and report names" (
      lowDisk.serviceConfig.ExecStart
      == "${builtins.head (builtins.split " " svc.serviceConfig.ExecStart)} --only-if-available-below 10% --threads 1"
      && lowDisk.environment.STOREGC_POLICY == "/etc/storegc/low-disk.toml"
      && lowDisk.environment.STOREGC_RUN_NAME == "low-disk"
      && lowDisk.environment.STOREGC_REPORT_DIR == "/var/log/storegc"
      && lowDisk.serviceConfig.Type == "oneshot"
      && lowDisk.serviceConfig.ProtectSystem == "strict"
      && lowDisk.serviceConfig.CapabilityBoundingSet == svc.serviceConfig.CapabilityBoundingSet
    ))
    (check "low-disk: a timer every interval from boot on" (
      cache02.systemd.timers.storegc-low-disk.wantedBy == [ "timers.target" ]
      && cache02.systemd.timers.storegc-low-disk.timerConfig == {
        OnBootSec = "5min";
        OnUnitInactiveSec = "5min";
      }
    ))
    (check "low-disk: its policy replaces extraPolicies.low-disk, checked when a Nix path" (
      cache02.environment.etc."storegc/low-disk.toml".source == "/nix/store/stub-storegc/share/storegc/policies/low-disk.toml"
      && (evalModule (example.services.storegc // { lowDisk = { enable = true; policy = ./../../policies/low-disk.toml; }; }))
        .result.environment.etc."storegc/low-disk.toml".source.name == "storegc-low-disk.toml"
    ))
    (check "low-disk: a threshold storegc would refuse fails the assertions" (
      let
        holds = below: all (a: a.assertion) (evalModule (example.services.storegc // { lowDisk = { enable = true; inherit below; }; })).result.assertions;
      in
      all holds [ "10%" "12.5%" "50GiB" "50 G" "1000" "5gb" ]
      && !(builtins.any holds [ "ten%" "10 %%" "-5%" "50 GiBs" "" "%" ])
    ))
    (check "low-disk: off by default" (
      !((evalModule (example.services.storegc // { lowDisk = { }; })).result.systemd.services ? storegc-low-disk)
    ))
    (check "metrics: off by default" (
      !(svc.environment ? STOREGC_METRICS_DIR) && !(lowDisk.environment ? STOREGC_METRICS_DIR)
    ))
    (check "metrics: metricsDir reaches the runs, writable and created, not the preview" (
      let
        r = (evalModule (example.services.storegc // { metricsDir = "/var/lib/node-exporter"; })).result;
        s = r.systemd.services;
      in
      s.storegc.environment.STOREGC_METRICS_DIR == "/var/lib/node-exporter"
      && s.storegc-low-disk.environment.STOREGC_METRICS_DIR == "/var/lib/node-exporter"
      && elem "/var/lib/node-exporter" s.storegc.serviceConfig.ReadWritePaths
      && elem "/var/lib/node-exporter" s.storegc-low-disk.serviceConfig.ReadWritePaths
      && !(elem "/var/lib/node-exporter" s.storegc-preview.serviceConfig.ReadWritePaths)
      && elem "d /var/lib/node-exporter 0755 root root - -" r.systemd.tmpfiles.rules
    ))
    (check "the example's types are accepted" (accepted { }))
    (check "wrong option types are evaluation errors" (all (c: !(accepted c.bad) && accepted c.good) typeCases))
    (check "package version from Cargo.toml" (pkg.version == cargo.package.version))
    (check "package meta" (pkg.meta.mainProgram == "storegc" && pkg.pname == "storegc"))
    (check "package lock file" (pathExists pkg.cargoLock.lockFile))
    (check "package generates completions and the man page" (
      lib.fileset.unions [ ../../Cargo.toml ] != [ ]
      && builtins.match ".*completions bash.*completions zsh.*completions fish.*storegc\" man > storegc.1.*storegc\" man policy > storegc-policy.5.*installManPage storegc.1 storegc-policy.5.*" pkg.postInstall != null
    ))
  ];
in
if all (x: x) checks then
  {
    options = optionNames;
    inherit examplePolicy runnerNames runnerUnits;
    typeErrors = map (c: attrNames c.bad) typeCases;
  }
else
  throw "unreachable"
