// `dsmil cv --nproc N`: the ranks of a data-parallel job on this machine, one process per GPU.
#pragma once

namespace dsmil::app {

// Runs N copies of this process's own command line (/proc/self/cmdline) as ranks 0..N-1, rank r on GPU r:
// each gets DSMIL_RANK, DSMIL_WORLD_SIZE, DSMIL_LOCAL_RANK and one fresh DSMIL_RENDEZVOUS file (a rank
// reads these instead of launching again). Once a rank fails the others are stopped, since a rank left in a
// collective would wait forever. Throws dsmil::Error naming each failed rank.
void run_local_ranks(int nproc);

}  // namespace dsmil::app
