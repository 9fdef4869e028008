#include "pipeline/one_pass_instance.hpp"

#include "datapath/instance_header.hpp"
#include "util/unique_fd.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <vector>
#include <cstring>

namespace luksforge::detail {

namespace {

// Removes a file unless dismissed.
class ScratchFile {
public:
    explicit ScratchFile(std::filesystem::path path) : path_(std::move(path)) {}
    ScratchFile(const ScratchFile&) = delete;
    ScratchFile& operator=(const ScratchFile&) = delete;
    ~ScratchFile() {
        if (!path_.empty()) ::unlink(path_.c_str());
    }
    void dismiss() noexcept { path_.clear(); }

private:
    std::filesystem::path path_;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::variant<OnePassSource, std::string> one_pass_source(const Volume& volume, const LuksTarget& target,
                                                         SecretBuffer volume_key) {
    auto layout = datapath::read_segment_layout(volume);
    if (auto* reason = std::get_if<std::string>(&layout)) return *reason;
    OnePassSource source;
    source.target = target;
    source.layout = std::get<datapath::SegmentLayout>(layout);
    source.volume_key = std::move(volume_key);
    for (const Token& token : volume.tokens())
        // luksforge's own records (seal, regen in progress) describe the source's header, not the new one.
        if (token.keyslots.empty() && !token.type.starts_with("luksforge-")) source.carried_tokens.push_back(token.json);
    return source;
}

namespace {

// The header of one image, made apart and written last (see the file comment).
OnePassImage finish_one_pass_image(const OnePassSource& source, const OnePassBinding& binding,
                                   const SecretBuffer& new_key, int out_fd, const std::filesystem::path& scratch_header) {
    OnePassImage image;
    const auto bind_started = std::chrono::steady_clock::now();
    ScratchFile scratch(scratch_header);
    const std::uint64_t volume_bytes = source.target.size_bytes != 0
                                           ? source.target.size_bytes
                                           : datapath::source_bytes(source.target.image) - source.target.offset_bytes;
    datapath::format_instance_header(scratch_header, volume_bytes, source.layout, new_key);
    {
        Volume header = Volume::open(scratch_header);
        for (const std::string& token : source.carried_tokens) header.set_token(token);
        clevis::BindOptions options;
        options.pin = binding.pin_options;
        options.pbkdf = binding.keyslot_pbkdf;
        options.verify = true;
        const clevis::BindResult bound = clevis::bind_with_volume_key(header, binding.binding.pin,
                                                                      binding.binding.config_json, options, &new_key);
        if (bound.verification != clevis::Verification::verified)
            throw TangError("binding not verified: " + bound.message);
        image.keyslot = bound.keyslot;
        image.token = bound.token;
        image.fingerprint = header.fingerprint();
        image.uuid = header.inspect().uuid;
    }
    image.bind_seconds = seconds_since(bind_started);
    // Last: the header into the new file (fsynced).
    datapath::write_instance_header(scratch_header, out_fd, source.target.offset_bytes, source.layout.data_offset);
    return image;
}

// New files for the images: instances carry key material, never readable by others, not even for a moment.
std::vector<std::unique_ptr<UniqueFd>> create_images(const std::vector<std::filesystem::path>& destinations) {
    std::vector<std::unique_ptr<UniqueFd>> files;
    for (const std::filesystem::path& destination : destinations) {
        auto fd = std::make_unique<UniqueFd>(::open(destination.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
        if (fd->fd < 0) throw Error(errno, "cannot create " + destination.string() + ": " + std::strerror(errno));
        ::fchmod(fd->fd, 0600);  // whatever the umask
        files.push_back(std::move(fd));
    }
    return files;
}

datapath::OnePassCopy copy_spec(const OnePassSource& source, bool keep_holes) {
    datapath::OnePassCopy copy;
    copy.source = source.target.image;
    copy.volume_offset = source.target.offset_bytes;
    copy.volume_bytes = source.target.size_bytes;
    copy.layout = source.layout;
    copy.old_key = &source.volume_key;
    copy.keep_holes = keep_holes;
    return copy;
}

}  // namespace

OnePassImage write_one_pass_image(const OnePassSource& source, const OnePassBinding& binding,
                                  const std::filesystem::path& destination,
                                  const std::filesystem::path& scratch_header, bool keep_holes,
                                  const std::function<void(const char*)>& crash_point,
                                  const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
    const SecretBuffer new_key = random_secret(source.layout.cipher.key_bytes);
    std::vector<std::unique_ptr<UniqueFd>> files = create_images({destination});
    // 1. Everything but the header: the data area re-encrypted, the rest of the image as it is.
    datapath::OnePassCopy copy = copy_spec(source, keep_holes);
    copy.new_key = &new_key;
    copy.stream.progress = progress;
    const datapath::OnePassStats stats = datapath::reencrypt_copy(copy, files[0]->fd);
    if (crash_point) crash_point("one-pass-data-written");
    // 2. The header apart, then into the file.
    OnePassImage image = finish_one_pass_image(source, binding, new_key, files[0]->fd, scratch_header);
    image.stats = stats;
    if (crash_point) crash_point("one-pass-header-written");
    return image;
}

void write_one_pass_images(const OnePassSource& source, const OnePassBinding& binding,
                           const std::vector<std::filesystem::path>& destinations,
                           const std::vector<std::filesystem::path>& scratch_headers, bool keep_holes,
                           const std::function<void(std::size_t, const OnePassImage&)>& on_finished) {
    if (scratch_headers.size() != destinations.size()) throw FormatError("one scratch header per image");
    std::vector<SecretBuffer> keys;
    for (std::size_t i = 0; i < destinations.size(); ++i) keys.push_back(random_secret(source.layout.cipher.key_bytes));
    std::vector<std::unique_ptr<UniqueFd>> files = create_images(destinations);
    std::vector<datapath::OnePassOutput> outputs;
    for (std::size_t i = 0; i < destinations.size(); ++i) outputs.push_back({files[i]->fd, &keys[i]});
    const datapath::OnePassStats stats = datapath::reencrypt_copies(copy_spec(source, keep_holes), outputs);
    for (std::size_t i = 0; i < destinations.size(); ++i) {
        OnePassImage image = finish_one_pass_image(source, binding, keys[i], files[i]->fd, scratch_headers[i]);
        image.stats = stats;
        on_finished(i, image);
    }
}

}  // namespace luksforge::detail
