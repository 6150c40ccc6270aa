
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_spool.h"
#include "ngx_http_dato_valid.h"


/*
 * The file:
 *
 *     ngx_http_dato spool 1
 *     records KEY ENV N         (KEY 8 hex digits, ENV "-" for none)
 *     ID                        (N lines)
 *     ...
 *     end LINES CRC             (the lines before it, their crc32)
 *
 * A file without its last line, with another count or checksum, or with
 * anything that is not an ID where an ID goes, is refused whole.
 */

#define NGX_HTTP_DATO_SPOOL_HEAD  "ngx_http_dato spool 1\n"

/* the ENV of records that have no environment of their own */
#define NGX_HTTP_DATO_SPOOL_NO_ENV  "-"

/* a spool holds at most what queues hold: far less than this */
#define NGX_HTTP_DATO_SPOOL_MAX   (64 * 1024 * 1024)

/* a line's records: a batch's, at most DatoCMS's 200 per bulk call */
#define NGX_HTTP_DATO_SPOOL_IDS   200


struct ngx_http_dato_spool_s {
    ngx_fd_t                      fd;
    ngx_log_t                    *log;
    ngx_str_t                     path;
    ngx_str_t                     temp;
    uint32_t                      crc;
    ngx_uint_t                    lines;
    ngx_uint_t                    failed;
};


static ngx_int_t ngx_http_dato_spool_write(ngx_http_dato_spool_t *sp,
    u_char *p, size_t len);
static void ngx_http_dato_spool_file(ngx_str_t *name, ngx_log_t *log,
    ngx_http_dato_spool_pt handler, void *data);
static ngx_int_t ngx_http_dato_spool_check(u_char *p, u_char *last);
static ngx_int_t ngx_http_dato_spool_parse(u_char *p, u_char *last,
    ngx_http_dato_spool_pt handler, void *data);
static u_char *ngx_http_dato_spool_line(u_char *p, u_char *last,
    ngx_str_t *line);
static void ngx_http_dato_spool_aside(ngx_str_t *name, ngx_log_t *log,
    const char *why);


/* runs when the worker stops: blocking file I/O is fine then */

ngx_http_dato_spool_t *
ngx_http_dato_spool_open(ngx_str_t *path, ngx_log_t *log)
{
    u_char                 *p;
    ngx_http_dato_spool_t  *sp;

    sp = ngx_calloc(sizeof(ngx_http_dato_spool_t)
                    + 2 * (path->len + sizeof(".4294967295.tmp")), log);
    if (sp == NULL) {
        return NULL;
    }

    sp->log = log;

    sp->path.data = (u_char *) &sp[1];
    p = ngx_sprintf(sp->path.data, "%V.%P%Z", path, ngx_pid);
    sp->path.len = p - sp->path.data - 1;

    sp->temp.data = p;
    p = ngx_sprintf(sp->temp.data, "%V.tmp%Z", &sp->path);
    sp->temp.len = p - sp->temp.data - 1;

    sp->fd = ngx_open_file(sp->temp.data, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE,
                           0600);

    if (sp->fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "dato: " ngx_open_file_n " \"%V\" failed", &sp->temp);
        ngx_free(sp);
        return NULL;
    }

    ngx_crc32_init(sp->crc);

    (void) ngx_http_dato_spool_write(sp, (u_char *) NGX_HTTP_DATO_SPOOL_HEAD,
                                     sizeof(NGX_HTTP_DATO_SPOOL_HEAD) - 1);
    sp->lines = 1;

    return sp;
}


ngx_int_t
ngx_http_dato_spool_add(ngx_http_dato_spool_t *sp, uint32_t key,
    ngx_str_t *env, u_char **ids, size_t *lens, ngx_uint_t n)
{
    u_char      *p, line[128];
    ngx_uint_t   i;

    static ngx_str_t  no_env = ngx_string(NGX_HTTP_DATO_SPOOL_NO_ENV);

    p = ngx_snprintf(line, sizeof(line), "records %08xD %V %ui\n", key,
                     env->len ? env : &no_env, n);

    if (ngx_http_dato_spool_write(sp, line, p - line) != NGX_OK) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        if (ngx_http_dato_spool_write(sp, ids[i], lens[i]) != NGX_OK
            || ngx_http_dato_spool_write(sp, (u_char *) "\n", 1) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    sp->lines += 1 + n;

    return NGX_OK;
}


/* the trailer, fsync, rename: a reader sees the whole file or none */

ngx_int_t
ngx_http_dato_spool_close(ngx_http_dato_spool_t *sp)
{
    u_char     *p, line[64];
    uint32_t    crc;
    ngx_int_t   rc;

    crc = sp->crc;
    ngx_crc32_final(crc);

    p = ngx_snprintf(line, sizeof(line), "end %ui %08xD\n", sp->lines, crc);

    rc = ngx_http_dato_spool_write(sp, line, p - line);

    if (rc == NGX_OK && fsync(sp->fd) == -1) {
        ngx_log_error(NGX_LOG_ERR, sp->log, ngx_errno,
                      "dato: fsync() \"%V\" failed", &sp->temp);
        rc = NGX_ERROR;
    }

    if (ngx_close_file(sp->fd) == NGX_FILE_ERROR) {
        rc = NGX_ERROR;
    }

    if (rc == NGX_OK
        && ngx_rename_file(sp->temp.data, sp->path.data) == NGX_FILE_ERROR)
    {
        ngx_log_error(NGX_LOG_ERR, sp->log, ngx_errno,
                      "dato: " ngx_rename_file_n " \"%V\" to \"%V\" failed",
                      &sp->temp, &sp->path);
        rc = NGX_ERROR;
    }

    if (rc != NGX_OK) {
        (void) ngx_delete_file(sp->temp.data);

    } else {
        ngx_log_error(NGX_LOG_WARN, sp->log, 0,
                      "dato: records that could not be sent before the "
                      "worker process stopped were spooled to \"%V\"; "
                      "they are sent after the next start", &sp->path);
    }

    ngx_free(sp);

    return rc;
}


static ngx_int_t
ngx_http_dato_spool_write(ngx_http_dato_spool_t *sp, u_char *p, size_t len)
{
    ssize_t  n;

    if (sp->failed) {
        return NGX_ERROR;
    }

    ngx_crc32_update(&sp->crc, p, len);

    while (len) {
        n = write(sp->fd, p, len);

        if (n == -1) {
            if (ngx_errno == NGX_EINTR) {
                continue;
            }

            ngx_log_error(NGX_LOG_ERR, sp->log, ngx_errno,
                          "dato: write() to \"%V\" failed", &sp->temp);
            sp->failed = 1;
            return NGX_ERROR;
        }

        p += n;
        len -= n;
    }

    return NGX_OK;
}


/*
 * At a worker's start: every "PATH.PID" file is checked whole, then its
 * records go to "handler", then it is deleted.  A file that fails the
 * check is moved aside ("PATH.PID.bad") and named in the log.
 */

void
ngx_http_dato_spool_read(ngx_str_t *path, ngx_log_t *log,
    ngx_http_dato_spool_pt handler, void *data)
{
    u_char     *p, *base, *dirname, *last;
    size_t      blen, len;
    ngx_dir_t   dir;
    ngx_str_t   name;
    ngx_uint_t  i, digits;

    base = path->data + path->len;

    while (base > path->data && base[-1] != '/') {
        base--;
    }

    blen = path->data + path->len - base;

    dirname = ngx_alloc(path->len + NGX_INT_T_LEN + 8, log);
    if (dirname == NULL) {
        return;
    }

    p = ngx_cpymem(dirname, path->data, base - path->data);

    if (p == dirname) {
        *p++ = '.';
    }

    *p = '\0';

    if (ngx_open_dir(&(ngx_str_t) { p - dirname, dirname }, &dir)
        == NGX_ERROR)
    {
        if (ngx_errno != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                          "dato: " ngx_open_dir_n " \"%s\" failed", dirname);
        }

        ngx_free(dirname);
        return;
    }

    for ( ;; ) {
        ngx_set_errno(0);

        if (ngx_read_dir(&dir) == NGX_ERROR) {
            break;
        }

        len = ngx_de_namelen(&dir);
        p = ngx_de_name(&dir);
        last = p + len;

        /* "BASE." and digits only: not ".tmp", not ".bad" */

        if (len <= blen + 1 || ngx_strncmp(p, base, blen) != 0
            || p[blen] != '.')
        {
            continue;
        }

        digits = 1;

        for (i = blen + 1; i < len; i++) {
            if (p[i] < '0' || p[i] > '9') {
                digits = 0;
                break;
            }
        }

        if (!digits) {
            continue;
        }

        name.len = (base - path->data) + len;
        name.data = ngx_alloc(name.len + 1, log);
        if (name.data == NULL) {
            break;
        }

        last = ngx_cpymem(name.data, path->data, base - path->data);
        last = ngx_cpymem(last, p, len);
        *last = '\0';

        ngx_http_dato_spool_file(&name, log, handler, data);

        ngx_free(name.data);
    }

    (void) ngx_close_dir(&dir);
    ngx_free(dirname);
}


static void
ngx_http_dato_spool_file(ngx_str_t *name, ngx_log_t *log,
    ngx_http_dato_spool_pt handler, void *data)
{
    u_char           *buf;
    ssize_t           n;
    ngx_file_t        file;
    ngx_file_info_t   fi;

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.name = *name;
    file.log = log;

    file.fd = ngx_open_file(name->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (file.fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "dato: " ngx_open_file_n " \"%V\" failed", name);
        return;
    }

    if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > NGX_HTTP_DATO_SPOOL_MAX)
    {
        ngx_close_file(file.fd);
        ngx_http_dato_spool_aside(name, log, "too big or unreadable");
        return;
    }

    buf = ngx_alloc((size_t) ngx_file_size(&fi) + 1, log);
    if (buf == NULL) {
        ngx_close_file(file.fd);
        return;
    }

    n = ngx_read_file(&file, buf, (size_t) ngx_file_size(&fi), 0);
    ngx_close_file(file.fd);

    if (n != (ssize_t) ngx_file_size(&fi)
        || ngx_http_dato_spool_check(buf, buf + n) != NGX_OK)
    {
        ngx_free(buf);
        ngx_http_dato_spool_aside(name, log,
                                  "not a whole spool file of this module "
                                  "(corrupt, cut short, or foreign)");
        return;
    }

    /* checked whole: what is handed on is queued, the file goes */

    (void) ngx_http_dato_spool_parse(buf, buf + n, handler, data);

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "dato: read back the spool file \"%V\"", name);

    if (ngx_delete_file(name->data) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "dato: " ngx_delete_file_n " \"%V\" failed", name);
    }

    ngx_free(buf);
}


/* the head, the trailer's count and checksum, and every line's shape */

static ngx_int_t
ngx_http_dato_spool_check(u_char *p, u_char *last)
{
    u_char      *end, *q;
    uint32_t     crc, want;
    ngx_int_t    lines, n;
    ngx_str_t    line;
    ngx_uint_t   count;

    if ((size_t) (last - p) < sizeof(NGX_HTTP_DATO_SPOOL_HEAD) - 1
        || ngx_strncmp(p, NGX_HTTP_DATO_SPOOL_HEAD,
                       sizeof(NGX_HTTP_DATO_SPOOL_HEAD) - 1)
           != 0
        || last[-1] != '\n')
    {
        return NGX_ERROR;
    }

    /* the last line */

    for (end = last - 1; end > p && end[-1] != '\n'; end--) { /* void */ }

    if (last - end < 15 || ngx_strncmp(end, "end ", 4) != 0) {
        return NGX_ERROR;
    }

    q = ngx_strlchr(end + 4, last, ' ');
    if (q == NULL) {
        return NGX_ERROR;
    }

    lines = ngx_atoi(end + 4, q - end - 4);
    n = ngx_hextoi(q + 1, last - 1 - q - 1);

    if (lines == NGX_ERROR || n == NGX_ERROR || last - 1 - q - 1 != 8) {
        return NGX_ERROR;
    }

    want = (uint32_t) n;
    crc = ngx_crc32_long(p, end - p);

    if (crc != want) {
        return NGX_ERROR;
    }

    count = 0;

    for (q = p; q < end; count++) {
        q = ngx_http_dato_spool_line(q, end, &line);
    }

    if (count != (ngx_uint_t) lines) {
        return NGX_ERROR;
    }

    return ngx_http_dato_spool_parse(p, end, NULL, NULL);
}


/* with no handler, only checks */

static ngx_int_t
ngx_http_dato_spool_parse(u_char *p, u_char *last,
    ngx_http_dato_spool_pt handler, void *data)
{
    u_char                     *f[4], *q;
    uint32_t                    key;
    ngx_int_t                   k, n;
    ngx_str_t                   line, env;
    ngx_uint_t                  i, j;
    ngx_http_dato_parse_str_t  *ids;

    p = ngx_http_dato_spool_line(p, last, &line);

    ids = ngx_alloc(NGX_HTTP_DATO_SPOOL_IDS * sizeof(ngx_http_dato_parse_str_t),
                    ngx_cycle->log);
    if (ids == NULL) {
        return NGX_ERROR;
    }

    while (p < last) {
        p = ngx_http_dato_spool_line(p, last, &line);

        if (ngx_strncmp(line.data, "end ", 4) == 0 && p >= last) {
            break;
        }

        /* records KEY ENV N */

        if (line.len < sizeof("records 00000000 - 1") - 1
            || ngx_strncmp(line.data, "records ", 8) != 0)
        {
            goto failed;
        }

        f[0] = line.data + 8;
        q = line.data + line.len;

        for (i = 1; i < 4; i++) {
            f[i] = ngx_strlchr(f[i - 1], q, ' ');
            f[i] = f[i] ? f[i] + 1 : q + 1;
        }

        k = ngx_hextoi(f[0], f[1] - f[0] - 1);
        n = ngx_atoi(f[2], q - f[2]);

        if (k == NGX_ERROR || f[1] - f[0] - 1 != 8 || n <= 0
            || n > NGX_HTTP_DATO_SPOOL_IDS || f[2] > q)
        {
            goto failed;
        }

        key = (uint32_t) k;
        env.data = f[1];
        env.len = f[2] - f[1] - 1;

        if (env.len == sizeof(NGX_HTTP_DATO_SPOOL_NO_ENV) - 1
            && ngx_strncmp(env.data, NGX_HTTP_DATO_SPOOL_NO_ENV, env.len) == 0)
        {
            env.len = 0;
        }

        if (env.len > NGX_HTTP_DATO_ENV_MAX_LEN
            || (env.len && !ngx_http_dato_valid_env((char *) env.data,
                                                    env.len)))
        {
            goto failed;
        }

        for (j = 0; j < (ngx_uint_t) n; j++) {
            if (p >= last) {
                goto failed;
            }

            p = ngx_http_dato_spool_line(p, last, &line);

            if (!ngx_http_dato_valid_id((char *) line.data, line.len)) {
                goto failed;
            }

            ids[j].data = (char *) line.data;
            ids[j].len = line.len;
        }

        if (handler) {
            (void) handler(data, key, &env, ids, n);
        }
    }

    ngx_free(ids);
    return NGX_OK;

failed:

    ngx_free(ids);
    return NGX_ERROR;
}


static u_char *
ngx_http_dato_spool_line(u_char *p, u_char *last, ngx_str_t *line)
{
    u_char  *nl;

    nl = ngx_strlchr(p, last, '\n');

    line->data = p;
    line->len = (nl ? nl : last) - p;

    return nl ? nl + 1 : last;
}


static void
ngx_http_dato_spool_aside(ngx_str_t *name, ngx_log_t *log, const char *why)
{
    u_char  *bad;

    bad = ngx_alloc(name->len + sizeof(".bad"), log);
    if (bad == NULL) {
        return;
    }

    (void) ngx_sprintf(bad, "%V.bad%Z", name);

    if (ngx_rename_file(name->data, bad) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "dato: the spool file \"%V\" is %s: refused, and "
                      ngx_rename_file_n " to \"%s\" failed; its records "
                      "are not sent", name, why, bad);

    } else {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "dato: the spool file \"%V\" is %s: refused, moved "
                      "to \"%s\"; its records are not sent", name, why, bad);
    }

    ngx_free(bad);
}
