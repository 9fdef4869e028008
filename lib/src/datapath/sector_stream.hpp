// Internal: the parallel engine of the one-pass data path. Reads a range of one file, transforms it chunk by
// chunk on every core, and writes it at the same or another place of another file — in bounded memory (one
// chunk buffer per worker) and skipping holes: only the data extents of the source (SEEK_DATA/SEEK_HOLE) are
// read, so a sparse source costs time in proportion to its allocated bytes and its holes stay holes.
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
    unsigned threads = 0;                      // 0 = one per CPU this process may run on
    std::size_t chunk_bytes = 4u << 20;        // per worker buffer; rounded down to the granule
    // Called from the calling thread about 10 times a second and at the end with (done, total) bytes.
    std::function<void(std::uint64_t, std::uint64_t)> progress;
};

// Work one worker thread does on a chunk it has read: transform it and write it wherever it belongs (it may
// change `data` in place); `offset` is the chunk's offset from the start of the source range. Created once per
// worker (its cipher contexts and scratch buffers are not shared between threads).
using ChunkWork = std::function<void(std::uint8_t* data, std::size_t bytes, std::uint64_t offset)>;
using WorkerFactory = std::function<ChunkWork()>;

struct StreamResult {
    std::uint64_t bytes_transformed = 0;       // data read and handed to the workers
    std::uint64_t bytes_skipped = 0;           // holes left as holes
    unsigned threads = 0;
};

// Read `extents` (offsets relative to `in_base`; lengths multiples of the granule that chunk_bytes is rounded
// to) from `in_fd` at in_base + offset, each byte once, and hand every chunk to a worker. Errors of any worker
// (I/O, cipher) stop all of them and are rethrown here.
StreamResult stream_extents(int in_fd, std::uint64_t in_base, const std::vector<Extent>& extents,
                            std::uint64_t range_bytes, std::uint64_t granule, const WorkerFactory& make_worker,
                            const StreamOptions& options = {});

// CPUs this process may run on (sched_getaffinity), at least 1.
unsigned usable_cpus() noexcept;

// pread/pwrite until done (EINTR and short transfers retried); throw Error naming `what` on failure or EOF.
void read_exact(int fd, void* data, std::size_t bytes, std::uint64_t offset, const char* what);
void write_exact(int fd, const void* data, std::size_t bytes, std::uint64_t offset, const char* what);

}  // namespace luksforge::datapath
