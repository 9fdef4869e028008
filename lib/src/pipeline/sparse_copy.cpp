// copy_sparse: copy an image file keeping its holes (SEEK_DATA/SEEK_HOLE + copy_file_range, plain reads and
// writes where that is unsupported), into a new 0600 file.
#include <luksforge/error.hpp>
#include <luksforge/pipeline.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

namespace luksforge {

void copy_sparse(const std::filesystem::path& source, const std::filesystem::path& destination) {
    int in = ::open(source.c_str(), O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        if (errno == ENOENT) throw NotFoundError("cannot open " + source.string() + ": no such file");
        throw Error(errno, "cannot open " + source.string() + ": " + std::strerror(errno));
    }
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } close_in{in};
    struct stat st{};
    if (::fstat(in, &st) != 0) throw Error(errno, "cannot stat " + source.string());
    if (!S_ISREG(st.st_mode)) throw FormatError(source.string() + " is not a regular file");
    // Instances carry key material: never readable by others, not even for a moment.
    int out = ::open(destination.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) throw Error(errno, "cannot create " + destination.string() + ": " + std::strerror(errno));
    Closer close_out{out};
    ::fchmod(out, 0600);  // whatever the umask
    const off_t size = st.st_size;
    if (::ftruncate(out, size) != 0) throw Error(errno, "cannot size " + destination.string() + ": " + std::strerror(errno));

    std::vector<char> buffer;
    off_t offset = 0;
    while (offset < size) {
        off_t data = ::lseek(in, offset, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) break;  // only a hole remains
            // No SEEK_DATA support: treat everything as data.
            data = offset;
        }
        off_t hole = ::lseek(in, data, SEEK_HOLE);
        if (hole < 0) hole = size;
        off_t position_in = data, position_out = data;
        while (position_in < hole) {
            const std::size_t chunk = static_cast<std::size_t>(std::min<off_t>(hole - position_in, 64 << 20));
            ssize_t copied = ::copy_file_range(in, &position_in, out, &position_out, chunk, 0);
            if (copied > 0) continue;
            if (copied == 0) break;
            if (errno == EINTR) continue;
            if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
                throw Error(errno, "cannot copy " + source.string() + ": " + std::strerror(errno));
            // copy_file_range unsupported here: plain reads and writes.
            buffer.resize(1 << 20);
            ssize_t got = ::pread(in, buffer.data(), std::min(chunk, buffer.size()), position_in);
            if (got < 0) throw Error(errno, "cannot read " + source.string() + ": " + std::strerror(errno));
            if (got == 0) break;
            for (ssize_t written = 0; written < got;) {
                ssize_t w = ::pwrite(out, buffer.data() + written, static_cast<std::size_t>(got - written), position_out);
                if (w < 0) {
                    if (errno == EINTR) continue;
                    throw Error(errno, "cannot write " + destination.string() + ": " + std::strerror(errno));
                }
                written += w;
                position_out += w;
            }
            position_in += got;
        }
        offset = hole;
    }
    if (::fsync(out) != 0) throw Error(errno, "cannot sync " + destination.string() + ": " + std::strerror(errno));
}

}  // namespace luksforge
