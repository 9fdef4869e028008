#include "datapath/sector_stream.hpp"

#include <luksforge/error.hpp>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

namespace luksforge::datapath {

unsigned usable_cpus() noexcept {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1u, std::thread::hardware_concurrency());
}

void read_exact(int fd, void* data, std::size_t bytes, std::uint64_t offset, const char* what) {
    auto* p = static_cast<std::uint8_t*>(data);
    while (bytes > 0) {
        const ssize_t n = ::pread(fd, p, bytes, static_cast<off_t>(offset));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw Error(errno, std::string("cannot read ") + what + ": " + std::strerror(errno));
        if (n == 0) throw Error(EIO, std::string("cannot read ") + what + ": unexpected end of file");
        p += n;
        bytes -= static_cast<std::size_t>(n);
        offset += static_cast<std::uint64_t>(n);
    }
}

void write_exact(int fd, const void* data, std::size_t bytes, std::uint64_t offset, const char* what) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    while (bytes > 0) {
        const ssize_t n = ::pwrite(fd, p, bytes, static_cast<off_t>(offset));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw Error(errno, std::string("cannot write ") + what + ": " + std::strerror(errno));
        p += n;
        bytes -= static_cast<std::size_t>(n);
        offset += static_cast<std::uint64_t>(n);
    }
}

std::vector<Extent> data_extents(int fd, std::uint64_t begin, std::uint64_t end, std::uint64_t granule) {
    std::vector<Extent> extents;
    if (begin >= end) return extents;
    const auto add = [&](std::uint64_t from, std::uint64_t to) {
        // Widen to whole granules relative to `begin`, clip to the range, merge with the previous extent.
        std::uint64_t a = begin + (from - begin) / granule * granule;
        std::uint64_t b = begin + (to - begin + granule - 1) / granule * granule;
        b = std::min(b, end);
        if (!extents.empty() && begin + extents.back().offset + extents.back().length >= a) {
            extents.back().length = std::max(extents.back().length, b - begin - extents.back().offset);
        } else {
            extents.push_back({a - begin, b - a});
        }
    };
    std::uint64_t position = begin;
    while (position < end) {
        const off_t data = ::lseek(fd, static_cast<off_t>(position), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) break;  // nothing but a hole up to the end of the file
            // No SEEK_DATA here (block device, old filesystem): everything is data.
            extents.clear();
            extents.push_back({0, end - begin});
            return extents;
        }
        if (static_cast<std::uint64_t>(data) >= end) break;
        off_t hole = ::lseek(fd, data, SEEK_HOLE);
        std::uint64_t stop = hole < 0 ? end : std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), end);
        add(static_cast<std::uint64_t>(data), stop);
        position = stop;
    }
    return extents;
}

namespace {

// The chunks all workers draw from, in file order (reads stay mostly sequential).
struct Chunk {
    std::uint64_t offset = 0;
    std::size_t bytes = 0;
};

std::vector<Chunk> split_into_chunks(const std::vector<Extent>& extents, std::size_t chunk_bytes) {
    std::vector<Chunk> chunks;
    for (const Extent& e : extents)
        for (std::uint64_t done = 0; done < e.length; done += chunk_bytes)
            chunks.push_back({e.offset + done, static_cast<std::size_t>(std::min<std::uint64_t>(chunk_bytes, e.length - done))});
    return chunks;
}

}  // namespace

StreamResult stream_extents(int in_fd, std::uint64_t in_base, const std::vector<Extent>& extents,
                            std::uint64_t range_bytes, std::uint64_t granule, const WorkerFactory& make_worker,
                            const StreamOptions& options) {
    const std::size_t chunk_bytes = std::max<std::size_t>(granule, options.chunk_bytes / granule * granule);
    const std::vector<Chunk> chunks = split_into_chunks(extents, chunk_bytes);
    std::uint64_t total = 0;
    for (const Chunk& c : chunks) total += c.bytes;

    StreamResult result;
    result.bytes_transformed = total;
    result.bytes_skipped = range_bytes > total ? range_bytes - total : 0;
    const unsigned wanted = options.threads != 0 ? options.threads : usable_cpus();
    result.threads = static_cast<unsigned>(std::max<std::size_t>(1, std::min<std::size_t>(wanted, chunks.size())));
    if (chunks.empty()) {
        if (options.progress) options.progress(0, 0);
        return result;
    }

    std::atomic<std::size_t> next{0};
    std::atomic<std::uint64_t> done{0};
    std::atomic<bool> failed{false};
    std::mutex mutex;
    std::condition_variable finished_cv;
    unsigned running = result.threads;
    std::exception_ptr first_error;

    const auto worker = [&] {
        try {
            ChunkWork work = make_worker();
            // One buffer per worker: peak memory is threads x chunk_bytes, whatever the image size.
            std::unique_ptr<std::uint8_t[]> buffer(new std::uint8_t[chunk_bytes]);
            for (std::size_t i = next++; i < chunks.size() && !failed; i = next++) {
                const Chunk& c = chunks[i];
                read_exact(in_fd, buffer.get(), c.bytes, in_base + c.offset, "the source");
                work(buffer.get(), c.bytes, c.offset);
                done += c.bytes;
            }
            // Plaintext passed through this buffer.
            ::explicit_bzero(buffer.get(), chunk_bytes);
        } catch (...) {
            std::lock_guard lock(mutex);
            if (!first_error) first_error = std::current_exception();
            failed = true;
        }
        std::lock_guard lock(mutex);
        --running;
        finished_cv.notify_all();
    };

    std::vector<std::thread> threads;
    threads.reserve(result.threads);
    try {
        for (unsigned t = 0; t < result.threads; ++t) threads.emplace_back(worker);
    } catch (...) {
        failed = true;
        std::lock_guard lock(mutex);
        running -= result.threads - static_cast<unsigned>(threads.size());
        if (!first_error) first_error = std::current_exception();
    }
    {
        std::unique_lock lock(mutex);
        while (running > 0) {
            finished_cv.wait_for(lock, std::chrono::milliseconds(100));
            if (options.progress && running > 0 && !failed) {
                lock.unlock();
                try {
                    options.progress(done.load(), total);
                } catch (...) {
                    // Stop the workers; rethrown below once they are gone.
                    std::lock_guard error_lock(mutex);
                    if (!first_error) first_error = std::current_exception();
                    failed = true;
                }
                lock.lock();
            }
        }
    }
    for (std::thread& t : threads) t.join();
    if (first_error) std::rethrow_exception(first_error);
    if (options.progress) options.progress(total, total);
    return result;
}

}  // namespace luksforge::datapath
