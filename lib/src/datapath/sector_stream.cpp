#include "datapath/sector_stream.hpp"

#include <luksforge/error.hpp>

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <new>
#include <stdexcept>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

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

// The chunks the reader reads, in file order (reads stay sequential).
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

// A chunk buffer aligned for O_DIRECT; plaintext passes through it, so it is wiped before it is freed.
class AlignedBuffer {
public:
    explicit AlignedBuffer(std::size_t bytes) : bytes_(bytes) {
        data_ = static_cast<std::uint8_t*>(std::aligned_alloc(kDirectAlignment, (bytes + kDirectAlignment - 1) /
                                                                                    kDirectAlignment * kDirectAlignment));
        if (data_ == nullptr) throw std::bad_alloc();
    }
    AlignedBuffer(AlignedBuffer&& other) noexcept : data_(std::exchange(other.data_, nullptr)), bytes_(other.bytes_) {}
    AlignedBuffer& operator=(AlignedBuffer&&) = delete;
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;
    ~AlignedBuffer() noexcept {
        if (data_ == nullptr) return;
        ::explicit_bzero(data_, bytes_);
        std::free(data_);
    }
    std::uint8_t* get() const noexcept { return data_; }

    static constexpr std::size_t kDirectAlignment = 4096;

private:
    std::uint8_t* data_ = nullptr;
    std::size_t bytes_ = 0;
};

// One chunk in flight: read into `data`, transformed by a worker, written by every lane, then free again.
struct Slot {
    AlignedBuffer data;
    std::vector<AlignedBuffer> scratch;
    std::vector<std::uint8_t*> scratch_pointers;
    std::vector<const std::uint8_t*> out;
    Chunk chunk;
    std::size_t writes_left = 0;
};

// The reader, workers and writers around one ring of slots. One mutex and one condition variable carry every
// hand-off: there are a few per MiB-sized chunk, so contention is nothing next to the I/O and the cipher.
class Pipeline {
public:
    Pipeline(int in_fd, std::uint64_t in_base, std::vector<Chunk> chunks, const StreamPlan& plan, unsigned workers,
             std::size_t slot_count, std::size_t chunk_bytes)
        : in_fd_(in_fd), in_base_(in_base), chunks_(std::move(chunks)), plan_(plan), workers_(workers),
          write_queues_(plan.lanes) {
        slots_.reserve(slot_count);
        for (std::size_t i = 0; i < slot_count; ++i) {
            Slot slot{AlignedBuffer(chunk_bytes), {}, {}, std::vector<const std::uint8_t*>(plan.lanes), {}, 0};
            for (std::size_t k = 0; k < plan.scratch_buffers; ++k) {
                slot.scratch.emplace_back(chunk_bytes);
                slot.scratch_pointers.push_back(slot.scratch.back().get());
            }
            slots_.push_back(std::move(slot));
            free_.push_back(i);
        }
    }

    // Runs every thread to its end; the first error of any of them is rethrown.
    void run(const std::function<void(std::uint64_t, std::uint64_t)>& progress, std::uint64_t total) {
        workers_left_ = workers_;
        std::vector<std::thread> threads;
        try {
            threads.emplace_back([this] { read_all(); });
            for (unsigned t = 0; t < workers_; ++t) threads.emplace_back([this] { transform_all(); });
            for (std::size_t lane = 0; lane < plan_.lanes; ++lane)
                for (unsigned w = 0; w < std::max(1u, plan_.writers_per_lane); ++w)
                    threads.emplace_back([this, lane] { write_all(lane); });
        } catch (...) {
            fail(std::current_exception());  // the threads that did start see it and end
        }
        {
            std::unique_lock lock(mutex_);
            auto next_report = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
            while (finished_ < threads.size()) {
                changed_.wait_until(lock, next_report);
                if (!progress || failed_ || finished_ >= threads.size() || std::chrono::steady_clock::now() < next_report)
                    continue;
                next_report = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
                lock.unlock();
                try {
                    progress(done_.load(), total);
                } catch (...) {
                    fail(std::current_exception());  // stops the threads; rethrown below
                }
                lock.lock();
            }
        }
        for (std::thread& t : threads) t.join();
        if (error_) std::rethrow_exception(error_);
    }

private:
    void fail(std::exception_ptr error) {
        std::lock_guard lock(mutex_);
        if (!error_) error_ = std::move(error);
        failed_ = true;
        changed_.notify_all();
    }

    void finished() {
        std::lock_guard lock(mutex_);
        ++finished_;
        changed_.notify_all();
    }

    // Sequential reads into free slots, ahead of the workers.
    void read_all() {
        try {
            if (!chunks_.empty()) {
                const std::uint64_t first = in_base_ + chunks_.front().offset;
                const std::uint64_t last = in_base_ + chunks_.back().offset + chunks_.back().bytes;
                // Larger readahead; advice only, so its failure (e.g. a pipe) changes nothing.
                ::posix_fadvise(in_fd_, static_cast<off_t>(first), static_cast<off_t>(last - first), POSIX_FADV_SEQUENTIAL);
            }
            for (std::size_t i = 0; i < chunks_.size(); ++i) {
                const Chunk& chunk = chunks_[i];
                // Keep the disk busy while this chunk is copied out and transformed: the kernel starts reading
                // the chunks after it now (asynchronous readahead), so a base that is not in the page cache is
                // read at the disk's speed, not one synchronous readahead window at a time.
                for (std::size_t ahead = i + 1; ahead < chunks_.size() && ahead <= i + kPrefetchChunks; ++ahead)
                    if (ahead == i + kPrefetchChunks || i == 0)
                        ::posix_fadvise(in_fd_, static_cast<off_t>(in_base_ + chunks_[ahead].offset),
                                        static_cast<off_t>(chunks_[ahead].bytes), POSIX_FADV_WILLNEED);
                std::size_t index = 0;
                {
                    std::unique_lock lock(mutex_);
                    changed_.wait(lock, [&] { return failed_ || !free_.empty(); });
                    if (failed_) break;
                    index = free_.back();
                    free_.pop_back();
                }
                Slot& slot = slots_[index];
                slot.chunk = chunk;
                read_exact(in_fd_, slot.data.get(), chunk.bytes, in_base_ + chunk.offset, "the source");
                std::lock_guard lock(mutex_);
                read_.push_back(index);
                changed_.notify_all();
            }
        } catch (...) {
            fail(std::current_exception());
        }
        {
            std::lock_guard lock(mutex_);
            reading_done_ = true;
            changed_.notify_all();
        }
        finished();
    }

    void transform_all() {
        try {
            ChunkTransform transform = plan_.make_worker();
            for (;;) {
                std::size_t index = 0;
                {
                    std::unique_lock lock(mutex_);
                    changed_.wait(lock, [&] { return failed_ || !read_.empty() || reading_done_; });
                    if (failed_ || read_.empty()) break;
                    index = read_.front();
                    read_.pop_front();
                }
                Slot& slot = slots_[index];
                std::fill(slot.out.begin(), slot.out.end(), nullptr);
                transform(slot.data.get(), slot.chunk.bytes, slot.chunk.offset, slot.scratch_pointers.data(),
                          slot.out.data());
                for (const std::uint8_t* out : slot.out)
                    if (out == nullptr) throw std::logic_error("a chunk transform left a lane without data");
                std::lock_guard lock(mutex_);
                slot.writes_left = plan_.lanes;
                for (auto& queue : write_queues_) queue.push_back(index);
                changed_.notify_all();
            }
        } catch (...) {
            fail(std::current_exception());
        }
        {
            std::lock_guard lock(mutex_);
            --workers_left_;
            changed_.notify_all();
        }
        finished();
    }

    void write_all(std::size_t lane) {
        try {
            std::deque<std::size_t>& queue = write_queues_[lane];
            for (;;) {
                std::size_t index = 0;
                {
                    std::unique_lock lock(mutex_);
                    changed_.wait(lock, [&] { return failed_ || !queue.empty() || workers_left_ == 0; });
                    if (failed_ || queue.empty()) break;
                    index = queue.front();
                    queue.pop_front();
                }
                Slot& slot = slots_[index];
                plan_.write(lane, slot.out[lane], slot.chunk.bytes, slot.chunk.offset);
                std::lock_guard lock(mutex_);
                if (--slot.writes_left == 0) {
                    done_ += slot.chunk.bytes;
                    free_.push_back(index);
                }
                changed_.notify_all();
            }
        } catch (...) {
            fail(std::current_exception());
        }
        finished();
    }

    static constexpr std::size_t kPrefetchChunks = 2;

    const int in_fd_;
    const std::uint64_t in_base_;
    const std::vector<Chunk> chunks_;
    const StreamPlan& plan_;
    const unsigned workers_;
    std::vector<Slot> slots_;

    std::mutex mutex_;
    std::condition_variable changed_;
    std::vector<std::size_t> free_;                       // slots to read into
    std::deque<std::size_t> read_;                        // slots read, to transform
    std::vector<std::deque<std::size_t>> write_queues_;   // per lane: slots transformed, to write
    bool reading_done_ = false;
    unsigned workers_left_ = 0;
    std::size_t finished_ = 0;                            // threads that have ended
    bool failed_ = false;
    std::exception_ptr error_;
    std::atomic<std::uint64_t> done_{0};
};

// The unit chunk sizes are multiples of: the granule, and 4096 where the granule divides it (O_DIRECT).
std::size_t chunk_unit(std::uint64_t granule) {
    if (granule == 0) return AlignedBuffer::kDirectAlignment;
    if (AlignedBuffer::kDirectAlignment % granule == 0) return AlignedBuffer::kDirectAlignment;
    return static_cast<std::size_t>(granule);
}

}  // namespace

StreamResult stream_extents(int in_fd, std::uint64_t in_base, const std::vector<Extent>& extents,
                            std::uint64_t range_bytes, std::uint64_t granule, const StreamPlan& plan,
                            const StreamOptions& options) {
    if (plan.lanes == 0 || !plan.make_worker || !plan.write) throw std::invalid_argument("stream plan without lanes or work");
    const unsigned wanted = options.threads != 0 ? options.threads : usable_cpus();
    // Ahead of the workers one chunk being read, behind them one per lane writer and one queued.
    const std::size_t slot_count = wanted + 2 + std::max(1u, plan.writers_per_lane);
    const std::size_t unit = chunk_unit(granule);
    std::size_t chunk_bytes = std::min(options.chunk_bytes,
                                       options.buffer_budget_bytes / (slot_count * (1 + plan.scratch_buffers)));
    chunk_bytes = std::max(unit, chunk_bytes / unit * unit);
    // Extent lengths are granule multiples; a chunk must be one too.
    if (granule > 1 && chunk_bytes % granule != 0) chunk_bytes = std::max<std::size_t>(granule, chunk_bytes / granule * granule);
    std::vector<Chunk> chunks = split_into_chunks(extents, chunk_bytes);
    std::uint64_t total = 0;
    for (const Chunk& c : chunks) total += c.bytes;

    StreamResult result;
    result.bytes_transformed = total;
    result.bytes_skipped = range_bytes > total ? range_bytes - total : 0;
    result.threads = static_cast<unsigned>(std::max<std::size_t>(1, std::min<std::size_t>(wanted, chunks.size())));
    result.chunk_bytes = chunk_bytes;
    if (chunks.empty()) {
        if (options.progress) options.progress(0, 0);
        return result;
    }
    const std::size_t slots = std::min(slot_count, chunks.size() + result.threads);
    Pipeline pipeline(in_fd, in_base, std::move(chunks), plan, result.threads, slots, chunk_bytes);
    pipeline.run(options.progress, total);
    if (options.progress) options.progress(total, total);
    return result;
}

}  // namespace luksforge::datapath
