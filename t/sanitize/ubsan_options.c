
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * Preloaded into nginx by t/sanitize/run.sh, after libasan and before
 * libubsan, so that UBSan's reports of the gcc build land in files, with
 * stack traces.  Two things stand in the way without it:
 *
 *  - gcc's libasan and libubsan each carry a copy of sanitizer_common, and
 *    both export __sanitizer_set_report_path().  The call with which UBSan
 *    applies its log_path binds to libasan's copy: it moves ASan's reports
 *    there, and UBSan itself keeps writing to stderr.  So run.sh gives
 *    UBSan the same log_path as ASan (the call changes nothing then), and
 *    this library points libubsan's own copy, found with dlsym() on
 *    libubsan's handle, at $UBSAN_LOG_PATH.
 *
 *  - UBSan may read its options only at its first report, in a worker,
 *    when nginx has written the process title over the memory that held
 *    the environment (where the sanitizers read it: /proc/self/environ).
 *    This library copies UBSAN_OPTIONS when nginx starts and hands the
 *    copy to UBSan through its __ubsan_default_options() hook.
 *
 * Built without sanitizers:
 *     gcc -shared -fPIC -o ubsan_options.so ubsan_options.c -ldl
 */


#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>


static char  ubsan_options[4096];


__attribute__((constructor))
static void
ubsan_options_init(void)
{
    void        *ubsan;
    const char  *s;
    void       (*set_report_path)(const char *path);

    s = getenv("UBSAN_OPTIONS");

    if (s != NULL) {
        strncpy(ubsan_options, s, sizeof(ubsan_options) - 1);
    }

    s = getenv("UBSAN_LOG_PATH");

    if (s == NULL || *s == '\0') {
        return;
    }

    ubsan = dlopen("libubsan.so.1", RTLD_LAZY | RTLD_NOLOAD);
    if (ubsan == NULL) {
        return;
    }

    set_report_path = (void (*)(const char *))
                          dlsym(ubsan, "__sanitizer_set_report_path");

    /* the path is copied */

    if (set_report_path != NULL) {
        set_report_path(s);
    }

    dlclose(ubsan);
}


const char *
__ubsan_default_options(void)
{
    return ubsan_options;
}
