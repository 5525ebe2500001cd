# NixOS module: services.storegc, policy-driven Nix store garbage
# collection on a timer.
#
#   imports = [ ./storegc/nix/module.nix ];
#   services.storegc = { enable = true; policy = { ... }; };
#
# Every night (startAt) storegc plans against the policy, writes the plan
# and a markdown report into reportDir, applies the plan (deleting through
# nix-store --delete, which re-checks liveness under Nix's GC lock) and
# keeps the newest keepReports of each. When a closure list changes (the
# CI job that builds the fleet's systems replaces it), a second unit plans
# without deleting and writes reportDir/preview.md for that job's summary.
# With lowDisk.enable, a third unit runs every few minutes and, only while
# the store's filesystem has less than lowDisk.below available, plans and
# applies the low-disk policy.
# See nix/example-nix-cache02.nix and the README's "Deployment" section.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:

let
  inherit (lib)
    genAttrs
    literalExpression
    mapAttrs'
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    nameValuePair
    optional
    optionalAttrs
    optionals
    types
    ;

  cfg = config.services.storegc;
  tomlFormat = pkgs.formats.toml { };

  # Group-writable by closureListGroup: the CI job writes the closure list
  # of the fleet's current systems here. Nothing storegc writes lives here
  # (see reportDir).
  stateDir = "/var/lib/storegc";

  # The policy the service runs with, also at /etc/storegc/policy.toml for
  # manual runs. closureLists are added to [protect] closure-lists.
  policyAttrs =
    if cfg.closureLists == [ ] then
      cfg.policy
    else
      lib.recursiveUpdate cfg.policy {
        protect.closure-lists = lib.unique ((cfg.policy.protect.closure-lists or [ ]) ++ cfg.closureLists);
      };
  rawPolicy =
    if cfg.policyFile != null then
      cfg.policyFile
    else
      tomlFormat.generate "storegc-policy.toml" policyAttrs;

  # `storegc policy check` at build time, so a typo in the policy fails
  # nixos-rebuild instead of the nightly run. Only for a policy known at
  # build time (not a policyFile string naming a file on the host), and
  # only when the build platform can run the host's storegc.
  canRun = pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform;
  checkPolicy =
    name: file:
    pkgs.runCommand name { nativeBuildInputs = [ cfg.package ]; } ''
      storegc policy check ${file}
      cp ${file} "$out"
    '';
  canCheck = (cfg.policyFile == null || builtins.isPath cfg.policyFile) && canRun;
  policy = if canCheck then checkPolicy "storegc-policy.toml" rawPolicy else rawPolicy;
  policyPath = "/etc/storegc/policy.toml";

  # The low-disk run's policy, checked the same way when it is a Nix path;
  # at /etc/storegc/low-disk.toml, where manual runs find it too.
  lowDiskPolicy =
    if builtins.isPath cfg.lowDisk.policy && canRun then
      checkPolicy "storegc-low-disk.toml" cfg.lowDisk.policy
    else
      cfg.lowDisk.policy;
  lowDiskPolicyPath = "/etc/storegc/low-disk.toml";

  scriptInputs = [
    cfg.package
    config.nix.package
    pkgs.coreutils
  ];
  nightly = pkgs.writeShellApplication {
    name = "storegc-nightly";
    runtimeInputs = scriptInputs;
    text = lib.removePrefix "#!/usr/bin/env bash\n" (builtins.readFile ./storegc-nightly.sh);
  };
  preview = pkgs.writeShellApplication {
    name = "storegc-preview";
    runtimeInputs = scriptInputs;
    text = lib.removePrefix "#!/usr/bin/env bash\n" (builtins.readFile ./storegc-preview.sh);
  };

  # The closure lists the preview watches: every list of the policy (when
  # given as an attrset) and closureLists.
  watchedLists = lib.unique (
    cfg.closureLists ++ optionals (cfg.policy != null) (cfg.policy.protect.closure-lists or [ ])
  );

  # Who deletes: storegc's engine (Nix's GC protocol, in this process) or
  # nix-store, locally or through nix-daemon.
  engine = cfg.deleteWith == "storegc";
  throughDaemon = !engine && cfg.deleteThroughDaemon;
  # This process writes /nix/store itself, remounting it read-write in a
  # private mount namespace (NixOS mounts it read-only), as Nix does.
  local = !throughDaemon;

  # Hardening shared by the nightly and the preview unit. storegc runs as
  # root (not DynamicUser): it must see every GC root Nix honours, and
  # missing one could delete a live path. Each choice below keeps that.
  hardening = {
    # Everything read-only but what a GC writes: /nix/var/nix (removing
    # expired roots under gcroots/ and profiles/, the apply lock in
    # /nix/var/nix/storegc, and the SQLite shared-memory index beside the
    # database, which even a read-only reader needs) and the reports.
    # /nix/store is writable only when deleting without the daemon.
    ProtectSystem = "strict";
    ReadWritePaths = [
      "/nix/var/nix"
      cfg.reportDir
    ] ++ optional local "/nix/store" ++ optional (cfg.metricsDir != null) cfg.metricsDir;
    # Read-only, not true/tmpfs: indirect roots (`result` links made by
    # nix build) live in home directories, and a root whose link storegc
    # cannot see would count as gone.
    ProtectHome = "read-only";
    # PrivateTmp stays off for the same reason: a `result` link under
    # /tmp is an indirect root, and a private /tmp would hide it.
    PrivateTmp = false;
    # No ProtectProc=invisible or ProcSubset=pid: runtime roots are read
    # from /proc/<pid>/{exe,cwd,fd,maps,environ} of every process and
    # from /proc/sys/kernel/{modprobe,fbsplash,poweroff_cmd}; hidden
    # processes would be live paths deleted.
    PrivateDevices = true;
    # No network: the daemon socket (/nix/var/nix/daemon-socket/socket)
    # and Nix's gc-socket are file-system Unix sockets, which a private
    # network namespace still reaches. Only AF_UNIX is needed.
    PrivateNetwork = true;
    RestrictAddressFamilies = [ "AF_UNIX" ];
    NoNewPrivileges = true;
    # Root without the capabilities a GC does not need:
    # - CAP_SYS_PTRACE: read /proc/<pid>/{fd,maps,environ} of other
    #   users' processes (runtime roots); without it the kernel answers
    #   EACCES, which Nix and storegc skip, silently missing roots;
    # - CAP_DAC_READ_SEARCH: follow `result` links in 0700 home
    #   directories and /var/lib/private (indirect roots);
    # - CAP_DAC_OVERRIDE, CAP_FOWNER: remove expired roots in directories
    #   owned by other users (per-user profiles, gcroots/per-user);
    # - deleting in this process (deleteWith = "storegc", or a local
    #   nix-store) also needs CAP_SYS_ADMIN, for one thing only: remounting
    #   the read-only /nix/store writable in a private mount namespace
    #   (unshare(CLONE_NEWNS), then mount(MS_REMOUNT|MS_BIND)), as Nix
    #   does; a local nix-store also needs CAP_CHOWN (it fixes the store's
    #   ownership on open), storegc's engine does not.
    CapabilityBoundingSet = [
      "CAP_SYS_PTRACE"
      "CAP_DAC_READ_SEARCH"
      "CAP_DAC_OVERRIDE"
      "CAP_FOWNER"
    ] ++ optional local "CAP_SYS_ADMIN"
    ++ optional (local && !engine) "CAP_CHOWN";
    # Nix's private remount needs a mount namespace; nothing else does.
    RestrictNamespaces = if local then [ "mnt" ] else true;
    ProtectKernelTunables = true; # /proc/sys stays readable
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    # @chown stays: SQLite fchowns the files it creates beside the
    # database when running as root. A local delete mounts.
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
      "@chown"
    ] ++ optional local "@mount";
    SystemCallErrorNumber = "EPERM";
    UMask = "0022";
    # A GC is background work.
    Nice = 19;
    IOSchedulingClass = "idle";
  };

  environment = {
    STOREGC_POLICY = policyPath;
    STOREGC_REPORT_DIR = cfg.reportDir;
    STOREGC_KEEP_REPORTS = toString cfg.keepReports;
    STOREGC_MAX_PLAN_AGE = cfg.maxPlanAge;
  }
  // optionalAttrs (cfg.metricsDir != null) {
    # storegc-<run>-plan.prom and storegc-<run>-apply.prom, run being
    # nightly or low-disk (the preview writes none).
    STOREGC_METRICS_DIR = cfg.metricsDir;
  }
  // {
    STOREGC_DELETE_WITH = cfg.deleteWith;
  }
  // optionalAttrs throughDaemon {
    # nix-store --delete goes through nix-daemon, which already has
    # /nix/store mounted writable and re-checks liveness (its own view of
    # /proc included) under the GC lock.
    NIX_REMOTE = "daemon";
  };

  daemonUnits = optionals throughDaemon [ "nix-daemon.socket" ];

  # The units that may write the closure list: the ones named as systemd
  # has them, and each runner instance's unit as NixOS's
  # gitea-actions-runner module names it.
  writerUnits =
    cfg.closureListWriters
    ++ map (name: "gitea-runner-${utils.escapeSystemdPath name}") cfg.closureListRunners;
in
{
  options.services.storegc = {
    enable = mkEnableOption "storegc, policy-driven Nix store garbage collection on a timer";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The storegc package (also installed system-wide, with its man page and completions).";
    };

    policy = mkOption {
      type = types.nullOr tomlFormat.type;
      default = null;
      example = literalExpression ''
        {
          description = "binary cache + native CI runner";
          select = { origin = "local"; older-than = "14d"; };
          generations = [ { profile = "/nix/var/nix/profiles/system"; keep-newest = 5; } ];
          auto-roots = { older-than = "14d"; match = [ "/var/lib/gitea-runner/*/result" ]; };
        }
      '';
      description = ''
        The policy, as a Nix attrset rendered to TOML (keys as in the
        policy file, e.g. `select.older-than`). Checked with
        `storegc policy check` at build time. Exactly one of `policy` and
        `policyFile` must be set; `policy = { }` deletes exactly what
        `nix-store --gc` would.
      '';
    };

    policyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = literalExpression "./storegc-policies/nix-cache.toml";
      description = ''
        A policy file instead of `policy`. Checked at build time when it
        is a Nix path; a string naming a file on the host is used as is.
      '';
    };

    closureLists = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "/var/lib/storegc/nixos-configurations.txt" ];
      description = ''
        Closure lists (one store path a line) added to the policy's
        `protect.closure-lists`: every path listed is kept with its whole
        closure. A missing list makes the run fail (nothing is deleted),
        so the first run waits for the CI job to write it. Only with
        `policy`; a `policyFile` lists its own.
      '';
    };

    closureListGroup = mkOption {
      type = types.str;
      default = "storegc";
      description = ''
        The group that may write ${stateDir} (mode 2775), for the CI job
        that writes the closure list. Not the runner's own group: the
        Forgejo/Gitea runner runs as a DynamicUser, whose group exists
        only while it runs, so the module creates this static group (when
        left at "storegc") and adds it to the units in
        `closureListWriters`.
      '';
    };

    closureListRunners = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "actions-native" ];
      description = ''
        Instances of `services.gitea-actions-runner.instances` (the
        Forgejo/Gitea runner) whose jobs write the closure list. NixOS
        names an instance's unit `gitea-runner-''${utils.escapeSystemdPath
        name}` (`actions-native` runs as `gitea-runner-actions\x2dnative`),
        so the unit is derived here the same way; each gets what
        `closureListWriters` gives.
      '';
    };

    closureListWriters = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "my-ci-job" ];
      description = ''
        systemd services (without .service, spelled as systemd names them,
        escapes included) that may write ${stateDir}: each gets
        `closureListGroup` as a supplementary group and ${stateDir} as a
        ReadWritePaths exception to its sandbox. For runner instances use
        `closureListRunners`, which derives the unit name.
      '';
    };

    startAt = mkOption {
      type = with types; either str (listOf str);
      default = "daily";
      example = "03:15";
      description = "When the nightly run starts (systemd.time(7) calendar events).";
    };

    randomizedDelaySec = mkOption {
      type = types.str;
      default = "1h";
      description = "The timer's RandomizedDelaySec: a random delay after `startAt`, so a fleet does not collect at once.";
    };

    maxPlanAge = mkOption {
      type = types.str;
      default = "1h";
      description = "`storegc apply --max-plan-age`: apply refuses a plan older than this. The nightly run applies right after planning.";
    };

    reportDir = mkOption {
      type = types.str;
      default = "/var/log/storegc";
      description = ''
        Where each run writes plan-<time>.json and report-<time>.md
        (latest.md points to the newest report), and the preview writes
        preview.md. Root-owned, world-readable; not under ${stateDir},
        which the CI group can write.
      '';
    };

    keepReports = mkOption {
      type = types.ints.positive;
      default = 30;
      description = "How many plans and how many reports to keep in `reportDir` (the newest).";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--max-freed"
        "200GiB"
      ];
      description = "Extra arguments to `storegc plan` (nightly and preview), e.g. a budget or `--threads 1`.";
    };

    deleteWith = mkOption {
      type = types.enum [
        "storegc"
        "nix-store"
      ];
      default = "storegc";
      description = ''
        `storegc apply --delete-with`: "storegc" deletes in this process
        under Nix's own GC protocol (GC lock, gc-socket, database rows
        before files), remounting the read-only /nix/store writable in a
        private mount namespace, for which the unit gets CAP_SYS_ADMIN and
        the mount system calls; "nix-store" hands batches to
        `nix-store --delete` (see deleteThroughDaemon).
      '';
    };

    deleteThroughDaemon = mkOption {
      type = types.bool;
      default = true;
      description = ''
        With deleteWith = "nix-store": run `nix-store --delete` with NIX_REMOTE=daemon. NixOS mounts
        /nix/store read-only; a local nix-store as root would remount it
        in a private mount namespace, which needs CAP_SYS_ADMIN. Through
        the daemon the unit keeps no such capability and /nix/store stays
        read-only to it. Set to false only without nix-daemon.
      '';
    };

    metricsDir = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/prometheus-node-exporter-text-files";
      description = ''
        The folder of node_exporter's textfile collector
        (`--collector.textfile.directory`): each run writes
        storegc-nightly-plan.prom and storegc-nightly-apply.prom there
        (storegc-low-disk-*.prom for the low-disk run), atomically, with
        the last run's time, duration and result, what was planned and
        deleted per reason, what was kept per protection, the store's
        size and failures. Created (root, 0755) when missing. Off (null)
        by default.
      '';
    };

    lowDisk = {
      enable = mkEnableOption "a low-disk run: every `lowDisk.interval`, plan and apply `lowDisk.policy`, but only while the store's filesystem has less than `lowDisk.below` available";

      below = mkOption {
        type = types.str;
        default = "10%";
        example = "50GiB";
        description = ''
          `storegc plan --only-if-available-below`: the run does anything
          only while the store's filesystem has less than this available,
          a size ("50GiB") or a share of the filesystem ("10%"). Above it
          the run only reads statvfs and ends ("nothing to do").
        '';
      };

      policy = mkOption {
        type = types.path;
        default = "${cfg.package}/share/storegc/policies/low-disk.toml";
        defaultText = literalExpression ''"''${cfg.package}/share/storegc/policies/low-disk.toml"'';
        description = ''
          The policy of the low-disk run (a budget such as `until-free =
          "15%"` says how much to free), installed as
          /etc/storegc/low-disk.toml in place of `extraPolicies.low-disk`.
          Checked with `storegc policy check` at build time when it is a
          Nix path. The shipped one protects the closure list
          /var/lib/storegc/nixos-configurations.txt: while it is missing
          a low-disk run that has something to do fails (exit 2, nothing
          deleted); above the threshold the run ends before reading it.
        '';
      };

      interval = mkOption {
        type = types.str;
        default = "5min";
        description = "How long after boot, and after each low-disk run ends, the next one starts (systemd.time(7) time span).";
      };
    };

    previewOnChange = mkOption {
      type = types.bool;
      default = true;
      description = ''
        When a closure list changes, plan without deleting and write
        `reportDir`/preview.md (headed by the lists' sha256), for the CI
        job that wrote the list to post as its summary.
      '';
    };

    extraPolicies = mkOption {
      type = types.attrsOf types.path;
      default = {
        low-disk = "${cfg.package}/share/storegc/policies/low-disk.toml";
      };
      defaultText = literalExpression ''{ low-disk = "''${cfg.package}/share/storegc/policies/low-disk.toml"; }'';
      description = ''
        Policies for manual runs, installed as /etc/storegc/<name>.toml,
        e.g. `storegc plan --policy /etc/storegc/low-disk.toml
        --until-free 50GiB --out p.json` when disk runs low.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = (cfg.policy == null) != (cfg.policyFile == null);
          message = "services.storegc: set exactly one of policy and policyFile (policy = { } for Nix's own dead set).";
        }
        {
          assertion = cfg.policyFile == null || cfg.closureLists == [ ];
          message = "services.storegc: closureLists is added to `policy`; with policyFile, list them in the file's [protect] closure-lists.";
        }
        {
          # What `storegc plan --only-if-available-below` takes, so a typo
          # fails the rebuild rather than every low-disk run.
          assertion =
            !cfg.lowDisk.enable
            || builtins.match "[0-9]+(\\.[0-9]+)? *(%|[BbKkMmGgTtPp]|[KkMmGgTtPp][Ii]?[Bb])?" cfg.lowDisk.below != null;
          message = "services.storegc.lowDisk.below: '${cfg.lowDisk.below}' is neither a size (\"50GiB\") nor a percentage (\"10%\").";
        }
        {
          assertion = throughDaemon -> config.nix.enable;
          message = "services.storegc: deleteThroughDaemon needs nix-daemon (nix.enable).";
        }
      ];
      warnings =
        optional config.nix.gc.automatic "services.storegc: nix.gc.automatic is enabled too; nix-collect-garbage ignores the storegc policy and deletes what it protects (e.g. the other hosts' systems on a binary cache)."
        ++ optional (config.nix.settings ? min-free) "services.storegc: nix.settings.min-free makes Nix collect garbage on its own, ignoring the storegc policy.";

      environment.systemPackages = [ cfg.package ];
      environment.etc =
        {
          "storegc/policy.toml".source = policy;
        }
        // mapAttrs' (name: file: nameValuePair "storegc/${name}.toml" { source = file; }) cfg.extraPolicies
        // optionalAttrs cfg.lowDisk.enable { "storegc/low-disk.toml".source = lowDiskPolicy; };

      users.groups = mkIf (cfg.closureListGroup == "storegc") { storegc = { }; };

      systemd.tmpfiles.rules = [
        # setgid: lists written by the CI job keep the group.
        "d ${stateDir} 2775 root ${cfg.closureListGroup} - -"
        "d ${cfg.reportDir} 0755 root root - -"
      ] ++ optional (cfg.metricsDir != null) "d ${cfg.metricsDir} 0755 root root - -";

      systemd.services.storegc = {
        description = "storegc: plan and apply the Nix store GC policy";
        documentation = [ "man:storegc(1)" ];
        after = daemonUnits;
        wants = daemonUnits;
        startAt = cfg.startAt;
        inherit environment;
        serviceConfig = hardening // {
          Type = "oneshot";
          ExecStart = utils.escapeSystemdExecArgs ([ "${nightly}/bin/storegc-nightly" ] ++ cfg.extraArgs);
        };
      };
      # startAt made the timer; it catches up after downtime and spreads
      # the fleet.
      systemd.timers.storegc.timerConfig = {
        Persistent = true;
        RandomizedDelaySec = cfg.randomizedDelaySec;
      };
    }

    (mkIf cfg.lowDisk.enable {
      # The nightly script with --only-if-available-below: above the
      # threshold plan reads statvfs, says "nothing to do" and writes no
      # plan, so nothing is applied. Reports go to reportDir as
      # low-disk-plan-*.json and low-disk-report-*.md, kept apart from
      # the nightly ones. A run while the nightly one applies is refused
      # by apply's lock and retried at the next interval.
      systemd.services.storegc-low-disk = {
        description = "storegc: plan and apply the low-disk policy when free space is low";
        documentation = [ "man:storegc(1)" ];
        after = daemonUnits;
        wants = daemonUnits;
        environment = environment // {
          STOREGC_POLICY = lowDiskPolicyPath;
          STOREGC_RUN_NAME = "low-disk";
        };
        serviceConfig = hardening // {
          Type = "oneshot";
          ExecStart = utils.escapeSystemdExecArgs (
            [
              "${nightly}/bin/storegc-nightly"
              "--only-if-available-below"
              cfg.lowDisk.below
            ]
            ++ cfg.extraArgs
          );
        };
      };
      systemd.timers.storegc-low-disk = {
        description = "storegc: check for low disk space every ${cfg.lowDisk.interval}";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnBootSec = cfg.lowDisk.interval;
          OnUnitInactiveSec = cfg.lowDisk.interval;
        };
      };
    })

    {
      systemd.services = genAttrs writerUnits (_: {
        serviceConfig = {
          SupplementaryGroups = [ cfg.closureListGroup ];
          # "-": the runner still starts if the folder is missing.
          ReadWritePaths = [ "-${stateDir}" ];
        };
      });
    }

    (mkIf (cfg.previewOnChange && watchedLists != [ ]) {
      systemd.paths.storegc-preview = {
        description = "storegc: preview the plan when a closure list changes";
        wantedBy = [ "paths.target" ];
        pathConfig.PathChanged = watchedLists;
      };
      systemd.services.storegc-preview = {
        description = "storegc: plan without deleting, for the CI job's summary";
        documentation = [ "man:storegc(1)" ];
        after = daemonUnits;
        inherit environment;
        serviceConfig = hardening // {
          Type = "oneshot";
          # Plans only: no deletion, no root removed.
          CapabilityBoundingSet = [
            "CAP_SYS_PTRACE"
            "CAP_DAC_READ_SEARCH"
          ];
          ReadWritePaths = [
            "/nix/var/nix"
            cfg.reportDir
          ];
          ExecStart = utils.escapeSystemdExecArgs (
            [ "${preview}/bin/storegc-preview" ] ++ watchedLists ++ [ "--" ] ++ cfg.extraArgs
          );
        };
      };
    })
  ]);
}
