// Internal: the parallel engine of the one-pass data path. Reads a range of one file once, transforms it chunk
// by chunk on every core and writes the results to one or more outputs ("lanes") — reading, transforming and
// writing overlap: one reader thread reads ahead sequentially, the workers transform, one writer thread per lane
// writes, all through a small ring of chunk buffers (bounded memory whatever the image size). Only the data
// extents of the source (SEEK_DATA/SEEK_HOLE) are read, so a sparse source costs time in proportion to its
// allocated bytes and its holes stay holes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace luksforge::datapath {

// A byte range [offset, offset + length).
struct Extent {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
};

// The data extents of `fd` within [begin, end), widened to `granule`-byte units counted from `begin` (a unit
// touched by data is data, so a partly allocated encryption sector is transformed whole) and clipped to the
// range. Without SEEK_DATA support (block devices, some filesystems) the whole range is one extent.
std::vector<Extent> data_extents(int fd, std::uint64_t begin, std::uint64_t end, std::uint64_t granule);

struct StreamOptions {
    unsigned threads = 0;                      // transforming workers; 0 = one per CPU this process may run on
    std::size_t chunk_bytes = 4u << 20;        // largest chunk; rounded down to the granule
    // All chunk buffers together stay under this (chunks shrink when there are many lanes): the ring holds
    // threads + 2 + writers_per_lane chunks in flight, each with a buffer per lane.
    std::size_t buffer_budget_bytes = 48u << 20;
    // Called from the calling thread about 10 times a second and at the end with (done, total) bytes; done
    // counts chunks written to every lane.
    std::function<void(std::uint64_t, std::uint64_t)> progress;
};

// A worker's transform of one chunk it was handed: `data` holds the chunk as read (`bytes` long, `offset` from
// the start of the source range; it may be changed in place), `scratch` the chunk buffers of its own the slot has
// (StreamPlan::scratch_buffers of them). Set out[k] for every lane k to the bytes lane k writes (data or a
// scratch buffer). Created once per worker (its cipher contexts are not shared between threads).
using ChunkTransform = std::function<void(std::uint8_t* data, std::size_t bytes, std::uint64_t offset,
                                          std::uint8_t* const* scratch, const std::uint8_t** out)>;
using WorkerFactory = std::function<ChunkTransform()>;
// Write lane `lane`'s bytes of a chunk (called on that lane's writer threads, up to writers_per_lane at once,
// chunks in any order). Buffers are aligned to 4096 bytes (O_DIRECT).
using LaneWriter = std::function<void(std::size_t lane, const std::uint8_t* data, std::size_t bytes, std::uint64_t offset)>;

struct StreamPlan {
    std::size_t lanes = 1;                     // outputs
    unsigned writers_per_lane = 1;             // writer threads per output (direct writes in flight at once)
    std::size_t scratch_buffers = 0;           // chunk buffers per slot besides the one read into
    WorkerFactory make_worker;
    LaneWriter write;
};

struct StreamResult {
    std::uint64_t bytes_transformed = 0;       // data read and handed to the workers
    std::uint64_t bytes_skipped = 0;           // holes left as holes
    unsigned threads = 0;                      // transforming workers
    std::size_t chunk_bytes = 0;               // the chunk size used
};

// Read `extents` (offsets relative to `in_base`; lengths multiples of the granule that chunk_bytes is rounded
// to) from `in_fd` at in_base + offset, each byte once and in file order (posix_fadvise SEQUENTIAL), transform
// every chunk on a worker and write it on every lane. Errors of any thread (I/O, cipher, a throwing progress)
// stop all of them and the first is rethrown here. Every buffer is wiped before it is freed (plaintext passes
// through them).
StreamResult stream_extents(int in_fd, std::uint64_t in_base, const std::vector<Extent>& extents,
                            std::uint64_t range_bytes, std::uint64_t granule, const StreamPlan& plan,
                            const StreamOptions& options = {});

// CPUs this process may run on (sched_getaffinity), at least 1.
unsigned usable_cpus() noexcept;

// pread/pwrite until done (EINTR and short transfers retried); throw Error naming `what` on failure or EOF.
void read_exact(int fd, void* data, std::size_t bytes, std::uint64_t offset, const char* what);
void write_exact(int fd, const void* data, std::size_t bytes, std::uint64_t offset, const char* what);

}  // namespace luksforge::datapath
