# Evaluates nix/module.nix, nix/example-nix-cache02.nix and
# nix/package.nix against a small stand-in for nixpkgs' lib, pkgs and the
# module system, with plain Nix (nix-instantiate --eval, no nixpkgs: the
# machines that check this have no network). It catches what parsing
# cannot: a wrong relative path, an option used but not declared, a unit
# setting lost in a merge, an assertion that fails for the shipped
# example. It is not the NixOS module system: option types are not
# checked, and a module is evaluated once against its own defaults.
#
#   nix-instantiate --eval --strict --json nix/tests/eval.nix
#
# prints the option names of services.storegc and the example's policy as
# the module renders it (tests/deploy_files.rs checks both), or throws
# naming the check that failed.
let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    elem
    filter
    foldl'
    isAttrs
    isList
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
  type = name: { inherit name; };

  lib = {
    inherit recursiveUpdate removePrefix unique;
    mkOption = o: o;
    mkEnableOption = d: {
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
    types = {
      str = type "str";
      bool = type "bool";
      path = type "path";
      package = type "package";
      lines = type "lines";
      ints.positive = type "positive";
      nullOr = t: type "nullOr";
      listOf = t: type "listOf";
      attrsOf = t: type "attrsOf";
      either = a: b: type "either";
    };
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
      type = type "toml";
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

  # One evaluation of a module against the defaults of its options and the
  # given settings of services.storegc.
  evalModuleWith =
    canExecute: settings:
    let
      module = import ../module.nix {
        inherit lib utils config;
        pkgs = pkgsWith canExecute;
      };
      defaults = mapAttrs (n: o: o.default or null) module.options.services.storegc;
      config = {
        services.storegc = defaults // settings;
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
  optionNames = attrNames (evalModule { }).options.services.storegc;
  # The policy attrset as the module renders it, closureLists included.
  examplePolicy =
    (evalModuleWith false example.services.storegc).result.environment.etc."storegc/policy.toml".source.value;

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
      attrNames cache02.systemd.services == [ "gitea-runner-actions\\x2dnative" "storegc" "storegc-preview" ]
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
  }
else
  throw "unreachable"
