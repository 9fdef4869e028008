// Internal: libcurl's entry points, loaded on first use (util/dynamic_library.hpp says why). Only Tang
// exchanges use HTTP, so commands that never reach a Tang server never load libcurl and its ~30 libraries.
#pragma once

#include <curl/curl.h>

namespace luksforge::detail {

// X(member, symbol) for every libcurl function luksforge calls. The members are not named like the symbols:
// with GCC, curl.h makes curl_easy_setopt and curl_easy_getinfo type-checking macros, which would expand
// at `api.curl_easy_setopt(`.
#define LUKSFORGE_CURL_ENTRY_POINTS(X)                                                                  \
    X(global_init, curl_global_init)                                                                    \
    X(easy_init, curl_easy_init)                                                                        \
    X(easy_reset, curl_easy_reset)                                                                      \
    X(easy_cleanup, curl_easy_cleanup)                                                                  \
    X(easy_setopt, curl_easy_setopt)                                                                    \
    X(easy_perform, curl_easy_perform)                                                                  \
    X(easy_getinfo, curl_easy_getinfo)                                                                  \
    X(easy_strerror, curl_easy_strerror)                                                                \
    X(slist_append, curl_slist_append)                                                                  \
    X(slist_free_all, curl_slist_free_all)

struct CurlApi {
#define LUKSFORGE_DECLARE_ENTRY(member, symbol) decltype(&::symbol) member;
    LUKSFORGE_CURL_ENTRY_POINTS(LUKSFORGE_DECLARE_ENTRY)
#undef LUKSFORGE_DECLARE_ENTRY
};

// The table, loading libcurl.so.4 on the first call (thread-safe); throws luksforge::Error (ELIBACC) when it
// cannot, and tries again on the next call.
const CurlApi& curl();

}  // namespace luksforge::detail
