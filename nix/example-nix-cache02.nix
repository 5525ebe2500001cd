# services.storegc as set on nix-cache02: the fleet's binary cache
# (Harmonia serves this store to every host) and the native Forgejo
# runner ("native-nix", instance actions-native) that builds straight into
# it. Import it from the host's configuration, e.g.
# hosts/nix-cache02/storegc.nix, next to the actions-runner.nix that
# defines the runner.
{ ... }:

{
  imports = [ ./module.nix ];

  services.storegc = {
    enable = true;

    # policies/nix-cache.toml, as Nix: never delete what a host runs or is
    # about to run, let CI output go two weeks after it was built, keep a
    # few generations of this host's own system.
    policy = {
      description = "nix-cache02: binary cache + native CI runner";
      protect = {
        # Each host's system: added below through closureLists.
        paths = [ ];
        names = [ ];
      };
      select = {
        # Only paths built here; substituted paths stay (they are cheap to
        # get back, and other hosts fetch them from here).
        origin = "local";
        older-than = "14d";
        # The rollback window: only what has been unused for a week
        # (state in /nix/var/nix/storegc/dead-since).
        dead-for = "7d";
      };
      generations = [
        {
          profile = "/nix/var/nix/profiles/system";
          keep-newest = 5;
        }
      ];
      # `result` links the runner's jobs leave in its work directories
      # expire after two weeks; a person's own `result` stays.
      auto-roots = {
        older-than = "14d";
        match = [
          "/var/lib/gitea-runner/*/result"
          "/var/lib/gitea-runner/*/result-*"
        ];
        # The three newest of each CI repository stay whatever their age.
        keep-newest = 3;
        group-by = "/var/lib/gitea-runner/*/(*)/(*)/**";
      };
      budget.order = "oldest-first";
    };

    # Written by the storegc-report workflow (nix/forgejo/) after building
    # every nixosConfigurations.*: the systems the hosts run next.
    closureLists = [ "/var/lib/storegc/nixos-configurations.txt" ];
    # The native runner (instance actions-native) writes that list; its
    # DynamicUser gets the storegc group and a ReadWritePaths exception for
    # /var/lib/storegc. NixOS runs the instance as
    # gitea-runner-actions\x2dnative.service; the module derives that name.
    closureListRunners = [ "actions-native" ];

    # After the hosts' nightly auto-upgrade has fetched its systems, and
    # after the nightly CI build has refreshed the list.
    startAt = "04:30";
    randomizedDelaySec = "30min";
    # Plan and apply run back to back.
    maxPlanAge = "1h";
    reportDir = "/var/log/storegc";
    keepReports = 30;
    # Every 5 minutes: when the store's filesystem has less than 10% free,
    # plan and apply the shipped low-disk policy (largest paths first,
    # until 15% is free, protected closures untouched).
    lowDisk = {
      enable = true;
      below = "10%";
    };
    # One worker thread: Harmonia and the runner's builds come first.
    extraArgs = [
      "--threads"
      "1"
    ];
  };

  # The runner itself (hosts/nix-cache02/actions-runner.nix in the seed
  # plan) needs nothing more: closureListRunners above adds the group and
  # the writable folder to gitea-runner-actions\x2dnative.service.
}
