#!/usr/bin/env bash
# Install a single-node Slurm + MUNGE from the distribution packages (Debian 12: slurm 22.05), for the
# cluster tests (tests/test_cluster_harness.py). Idempotent; does nothing when slurmctld is already on
# PATH. Without root it says so and exits 0, so a non-root CI box simply skips the Slurm tests.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)

have_all() {
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
        && command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1
}

# the daemons live in /usr/sbin, which a non-login PATH may lack
export PATH="$PATH:/usr/sbin:/sbin"

if have_all; then
    echo "install_slurm: Slurm already installed ($(slurmctld -V 2>/dev/null || echo 'slurmctld present')); nothing to do"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm: needs root to install ${PACKAGES[*]} (run: sudo $0); skipping"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm: no apt-get on this system; install ${PACKAGES[*]} with your package manager"
    exit 0
fi

echo "install_slurm: apt-get update"
apt-get update -q
echo "install_slurm: apt-get install ${PACKAGES[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
# the packages' own services are not used (tests start private daemons); do not leave them running
for unit in slurmctld slurmd munge; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$unit" 2>/dev/null; then
        systemctl stop "$unit" || true
        echo "install_slurm: stopped the package's $unit service"
    fi
done
echo "install_slurm: installed $(slurmctld -V)"
