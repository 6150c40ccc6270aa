#!/usr/bin/env perl
# ===========================================================================
# dato_mock.pl - strict mock of the DatoCMS Content Management API (CMA),
# used by the ngx_http_dato_module tests.  Core Perl only, single process,
# single thread, non-blocking sockets multiplexed with IO::Select.
#
# USAGE
#   perl t/mock/dato_mock.pl --port P [options]
#
#   --port P          TCP port to listen on (required; 0 = pick a free port).
#   --host H          bind address, must be loopback (127.x.x.x or localhost);
#                     default 127.0.0.1.
#   --token T         expected API token (default "test-token").  May be
#                     given more than once: any of the tokens is accepted
#                     (the rate-limit window stays one for all of them).
#   --limit N         rate limit: N requests ... (default 60)
#   --window S        ... per sliding window of S seconds (default 3, may be
#                     fractional).  EVERY API request received counts,
#                     accepted or rejected, 429s included; /__mock/* does not.
#   --log FILE        append one JSON line per API request (record format
#                     below), flushed immediately.
#   --job-polls N     default number of "still running" (404) answers a new
#                     job gives on GET /job-results/:id before its 200
#                     (default 0; -1 = never finishes).
#   --pidfile F       write our pid to F (removed again on clean exit).
#   --lifetime S      hard self-stop after S seconds (default 600).
#   --idle-timeout S  close connections idle for S seconds (default 120).
#   --max-conns N     max simultaneous client connections (default 200);
#                     further connections are accepted and closed at once.
#   --max-body N      max request body in bytes (default 1048576); larger
#                     bodies get 413 INVALID_REQUEST + Connection: close
#                     without the body being read (API paths: recorded with
#                     status 413 and an empty body, and rate-counted).
#
#   Once listening, prints "READY <port>\n" on stdout (flushed).
#   Exits 0 on SIGTERM / SIGINT / end of lifetime; exits 2 on bad options or
#   if the port cannot be bound.
#
# HTTP
#   HTTP/1.1 with keep-alive (HTTP/1.0: close unless "Connection:
#   keep-alive"), "Connection: close" honoured, pipelining (answers in
#   order), Content-Length and "Transfer-Encoding: chunked" request bodies,
#   "Expect: 100-continue" (an interim "HTTP/1.1 100 Continue" is sent when
#   the body has not arrived yet).  Delayed answers never block other
#   connections.  Malformed requests get a plain 400/431/501/505 and the
#   connection is closed (not recorded, not rate-limited).
#
# API ENDPOINTS (rate-limited and recorded)
#   Every API answer carries X-RateLimit-Limit, X-RateLimit-Remaining
#   (= max(0, limit - requests in window, this one included)), X-Request-Id
#   and X-Api-Version: 3.  Error answers are
#     status + "Content-Type: application/json" + body
#     {"data":[{"id":"<6 hex>","type":"api_error","attributes":{
#        "code":"<CODE>","doc_url":"https://www.datocms.com/docs/content-management-api/errors#<CODE>",
#        "details":{...}[,"transient":true]}}]}
#
#   POST /items/bulk/publish, /items/bulk/unpublish and
#   /items/bulk/move-to-stage  check in this order, first failure answers
#   (the type is item_bulk_<action>_operation, "-" as "_"; move-to-stage
#   alone has "attributes":{"stage":"<non-empty string>"}, exactly):
#     1. more than --limit requests in the window -> 429 RATE_LIMIT_EXCEEDED
#        + "X-RateLimit-Reset: <int >= 1 s until the oldest counted request
#        leaves the window>"
#     2. Authorization != "Bearer <token>"          -> 401 INVALID_AUTHORIZATION_HEADER
#     3. Accept media type != application/json      -> 422 INVALID_ACCEPT_HEADER
#        (parameters after ';' ignored, lists such as "application/json, */*"
#        are rejected)
#     4. X-Api-Version != "3"                        -> 422 INVALID_API_VERSION
#     5. Content-Type media type not application/vnd.api+json or
#        application/json (params ignored)           -> 422 INVALID_CONTENT_TYPE_HEADER
#     6. body not valid UTF-8 JSON                   -> 422 INVALID_JSON_BODY
#     7. shape must be exactly
#        {"data":{"type":"item_bulk_publish_operation","relationships":
#          {"items":{"data":[{"type":"item","id":"<string>"},...]}}}}
#        data.type a string but another value        -> 422 INVALID_TYPE
#        anything else (missing/extra keys, wrong JSON types, item type not
#        "item", id not a JSON string)               -> 422 INVALID_FORMAT,
#                                                       details.messages[]
#     8. 0 items or more than 200                    -> 422 INVALID_FORMAT
#     9. same id twice in one call                   -> 422 INVALID_FORMAT ("duplicate id")
#    10. id not a valid record id (decimal 1..15 digits, no leading zero,
#        <= 281474976710655; or 22 chars [A-Za-z0-9_-] ending in A/Q/g/w)
#                                                    -> 422 INVALID_FIELD
#    11. an id listed in "refuse_ids" (POST /__mock/config): the first
#        such id in call order answers with its status and a DatoCMS
#        error body (code, details as configured); no job is created
#    12. 202, "Content-Type: application/json; charset=utf-8",
#        {"data":{"type":"job","id":"<job id>"}}; job ids are decimal
#        strings counting up from 4235 (a fault "job_id" sets another).
#        A call that names ids listed in "job_fail_ids" gets a job whose
#        result fails them (see JOB RESULTS below).
#
#   GET /job-results/:id       checks 1-4 as above, then
#     unknown id -> 404 NOT_FOUND;
#     known id: the first N polls (N = job "polls") -> 404 NOT_FOUND, later
#     polls -> 200 {"data":{"type":"job_result","id":"<id>","attributes":{
#       "status":200,"payload":{"data":[],"meta":{"successful":<items-failed>,
#       "failed":<failed>}}}}}
#     With a job "status" outside 2xx, attributes.status is that status and
#     payload is a DatoCMS error body (code = job "code", default
#     INVALID_FIELD for 4xx, INTERNAL_SERVER_ERROR for 5xx).
#     polls = -1: never finishes.  Only polls that pass checks 1-4 count.
#     The id is matched verbatim against the path (no percent-decoding).
#
#   JOB RESULTS (what a new job's settings come from, first that applies)
#     polls:      fault job.polls, else config job_polls
#     failed:     fault job.failed, else the number of "job_fail_ids" the
#                 call named, else 0
#     successful: fault job.successful (put in the result as given), else
#                 max(0, items - failed)
#     status:     fault job.status, else "job_fail_status" if the call named
#                 some "job_fail_ids", else 200
#     code:       fault job.code, else "job_fail_code" if the call named some
#                 "job_fail_ids", else the default above
#     Counts from a fault are raw: negative numbers, or more than the call
#     carried, are answered as given (hostile job results).
#
#   Anything else (other path or method) -> 429 if over the limit, else
#     404 INVALID_ENDPOINT (no header checks).
#
# FAULTS  (POST /__mock/faults)
#   Body: a JSON array of fault objects (a single object is also accepted),
#   APPENDED to a FIFO queue.  Each POST /items/bulk/publish takes the next
#   fault (if any) before any check.  Faults with "on":"job-results" go to a
#   separate queue consumed by GET /job-results/:id.  Unknown keys and
#   contradictory combinations are rejected with 400.  A fault "{}" is a
#   no-op that just consumes one request.
#     {"status":429,"reset":2}   forced 429 RATE_LIMIT_EXCEEDED,
#                                X-RateLimit-Reset: 2 (default 1),
#                                X-RateLimit-Remaining: 0
#     {"status":500}             500 INTERNAL_SERVER_ERROR (JSON error body)
#     {"status":502|503|504}     that status, SERVICE_UNAVAILABLE
#     {"status":502,"html":true} Content-Type: text/html,
#                                <html><body><h1>502 Bad Gateway</h1></body></html>
#     {"status":422,"code":"BATCH_DATA_VALIDATION_IN_PROGRESS","transient":true}
#                                422 with that code and "transient":true
#     {"status":422,"code":"UNPUBLISHED_LINK"}   422, no transient attribute
#        Any status 400..599 may be forced; "code" overrides the default
#        code, "details" (object) the details; "reset" (seconds) adds
#        X-RateLimit-Reset to any forced status.  Forced answers skip all
#        checks and create no job.
#     {"delay_ms":3000}          process normally, answer after the delay
#                                (combinable with everything else; with
#                                close/reset the drop happens after it)
#     {"reset":true}             (no "status") read the whole request, then
#                                close with a TCP RST (SO_LINGER 0); alias
#                                {"rst":true}
#     {"close":true}             read the whole request, close (FIN) without
#                                answering
#        close/reset do not process the request (no job).  Add
#        "process":true to process it normally first (job created, answer
#        lost).
#     {"job":{"polls":3,"failed":2,"successful":1,"status":200,"code":"..."}}
#                                process normally (202); the new job gets
#                                these settings (polls -1 = never finishes;
#                                failed and successful: any integer, even
#                                negative, put in the result as given)
#     {"job_id":"<string>"}      process normally; the 202 answer (and the
#                                job table) carry this job id instead of the
#                                next number (1..200000 characters, any;
#                                an existing job of that id is replaced).
#                                Combinable with "job"; not with "status".
#
# CONTROL ENDPOINTS (not rate-limited, not recorded, no header checks)
#   POST /__mock/faults    see above -> {"queued":n,"pending":m,"pending_job_results":k}
#   GET  /__mock/faults    -> {"publish":[...pending...],"job-results":[...]}
#   POST /__mock/config    {"limit":60,"window":3,"job_polls":2,"token":"x",
#                           "down_ms":3000,"down_mode":"refuse"|"close",
#                           "refuse_ids":{...},"job_fail_ids":[...],
#                           "job_fail_status":200,"job_fail_code":"..."}
#                          -> effective config ("token" is the first accepted
#                          token, "tokens" all of them).  "token" may also be
#                          a non-empty array of strings: the tokens accepted
#                          from then on.  down_ms simulates an outage:
#                          every open connection is closed (the config call
#                          itself is answered with Connection: close) and
#                          - down_mode "refuse" (default): the listening
#                            socket is closed and re-opened on the same port
#                            after down_ms (connect gets ECONNREFUSED);
#                          - down_mode "close": new connections are accepted
#                            and closed immediately.
#                          Control endpoints are unreachable while down too.
#                          refuse_ids: {"<record id>":{"status":422,
#                            "code":"UNPUBLISHED_LINK","details":{...}},...}
#                            replaces the set ({} clears it).  Each key a
#                            valid record id; each value an object with
#                            only these keys, all optional: status an
#                            integer 400..499 other than 429 (default 422),
#                            code a string (default INVALID_FIELD), details
#                            an object (default {"message":"refused by
#                            dato_mock (refuse_ids)"}: it does not name the
#                            record, as DatoCMS does not promise to).  A
#                            publish call naming one of them is answered at
#                            check 11 above (recorded with that status and
#                            the call's ids, "job":null).
#                          job_fail_ids: ["<record id>",...] replaces the
#                            set ([] clears it); a publish call naming some
#                            of them is accepted (202, job created) and its
#                            job result has meta.failed = how many of them
#                            it named, successful = the rest; or, with
#                            job_fail_status outside 2xx, attributes.status
#                            = that status and an error payload of code
#                            job_fail_code (see JOB RESULTS).
#                            job_fail_status (integer 100..599, default 200)
#                            and job_fail_code (string) are accepted only
#                            together with job_fail_ids, and go back to
#                            their defaults whenever job_fail_ids is given
#                            without them.
#   GET  /__mock/requests  -> JSON array of all recorded API requests
#   POST /__mock/reset     clear records, fault queues, rate-limit window,
#                          refuse_ids and job_fail_ids (job_fail_status and
#                          job_fail_code back to their defaults); the job
#                          table, job counter and other config are kept
#   GET  /__mock/stats     -> {"requests":n,"published_ids":n,
#                              "unique_published_ids":n,
#                              "action_ids":{"publish":n,"unpublish":n,
#                                            "move-to-stage":n},
#                              "status_counts":{"202":n,"429":n,...},
#                              "pending_faults":n,"connections":n,"jobs":n}
#                          published_ids = ids summed over 202 publish calls;
#                          connections includes the one asking.
#   GET  /__mock/jobs      -> JSON array of jobs and their poll counters
#
# REQUEST RECORD (one per API request; /__mock/requests and --log lines)
#   {"t":<epoch float when the request was fully received>,
#    "method":"POST","path":"<request target as received, query included>",
#    "headers":{"<lowercased name>":"<value>",...},   (repeats joined ", ")
#    "body":"<raw body>",
#    "status":<status answered; 0 for fault close/reset>,
#    "ids":[<item ids if the body parsed as a bulk publish, else []>],
#    "job":"<job id created (publish) or polled (job-results), or null>",
#    "env":"<X-Environment value or null>"}
#   Bodies/headers that are not valid UTF-8 are recorded as Latin-1.
#   At most 100000 records are kept in memory (oldest dropped); the log
#   file is not truncated.  The record is written when the answer is
#   decided, i.e. before a delayed answer is actually sent.
# ===========================================================================
use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use JSON::PP ();
use Time::HiRes ();
use Getopt::Long qw(GetOptions);
use POSIX ();
use Socket qw(SOL_SOCKET SO_LINGER IPPROTO_TCP TCP_NODELAY);

# ---------------------------------------------------------------- options --

my %opt = (
    host         => '127.0.0.1',
    port         => undef,
    token        => [],
    limit        => 60,
    window       => 3,
    log          => undef,
    job_polls    => 0,
    pidfile      => undef,
    lifetime     => 600,
    idle_timeout => 120,
    max_conns    => 200,
    max_body     => 1048576,
);

sub usage {
    my ($code) = @_;
    open(my $fh, '<', $0) or exit $code;
    while (my $l = <$fh>) {
        last if $l =~ /^use strict/;
        next if $l =~ /^#!/;
        $l =~ s/^# ?//;
        print STDERR $l;
    }
    exit $code;
}

GetOptions(
    'port=i'         => \$opt{port},
    'host=s'         => \$opt{host},
    'token=s@'       => $opt{token},
    'limit=i'        => \$opt{limit},
    'window=f'       => \$opt{window},
    'log=s'          => \$opt{log},
    'job-polls=i'    => \$opt{job_polls},
    'pidfile=s'      => \$opt{pidfile},
    'lifetime=f'     => \$opt{lifetime},
    'idle-timeout=f' => \$opt{idle_timeout},
    'max-conns=i'    => \$opt{max_conns},
    'max-body=i'     => \$opt{max_body},
    'help'           => sub { usage(0) },
) or usage(2);

sub fatal { print STDERR "dato_mock: $_[0]\n"; exit 2; }

fatal('--port is required') unless defined $opt{port};
fatal('--port must be 0..65535') if $opt{port} < 0 || $opt{port} > 65535;
$opt{host} = '127.0.0.1' if lc $opt{host} eq 'localhost';
fatal('--host must be a loopback IPv4 address (127.x.x.x)')
    unless $opt{host} =~ /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/
        && $1 <= 255 && $2 <= 255 && $3 <= 255;
$opt{token} = ['test-token'] unless @{ $opt{token} };
fatal('--limit must be >= 1')        if $opt{limit} < 1;
fatal('--window must be > 0')        if $opt{window} <= 0;
fatal('--job-polls must be >= -1')   if $opt{job_polls} < -1;
fatal('--lifetime must be > 0')      if $opt{lifetime} <= 0;
fatal('--idle-timeout must be > 0')  if $opt{idle_timeout} <= 0;
fatal('--max-conns must be >= 1')    if $opt{max_conns} < 1;
fatal('--max-body must be >= 1')     if $opt{max_body} < 1;

# Run-time configuration (changeable through POST /__mock/config).
my %cfg = (
    limit     => $opt{limit},
    window    => $opt{window},
    job_polls => $opt{job_polls},
    token     => [ @{ $opt{token} } ],    # the accepted tokens
    refuse_ids      => {},    # record id => {status, code, details}
    job_fail_ids    => {},    # record id => 1
    job_fail_status => 200,
    job_fail_code   => undef,
);

sub clear_record_rules {
    $cfg{refuse_ids}      = {};
    $cfg{job_fail_ids}    = {};
    $cfg{job_fail_status} = 200;
    $cfg{job_fail_code}   = undef;
}

# ------------------------------------------------------------------ state --

use constant {
    MAX_HEADER_BYTES => 65536,
    MAX_HEADERS      => 200,
    MAX_RECORDS      => 100000,
    MAX_ITEMS        => 200,
    MAX_RECORD_ID    => 281474976710655,
    FIRST_JOB_ID     => 4235,
    MAX_JOB_ID_LEN   => 200000,
};

my $JSON     = JSON::PP->new->utf8->canonical->allow_nonref;   # bytes <-> data
my $JSON_ONE = JSON::PP->new->allow_nonref;                     # type sniffing
# Validation decoder: big integers become Math::BigInt objects (refs) instead
# of plain strings, so {"id":123456789012345678901234} is still "not a string".
my $JSON_STRICT = JSON::PP->new->utf8->allow_nonref->allow_bignum;

my $start_time = Time::HiRes::time();
my $stop       = 0;

my $listener;            # IO::Socket::INET or undef while "down" (refuse)
my $bound_port;
my $down_until = 0;      # epoch; > now means we are down
my $down_mode  = 'refuse';

my %conns;               # conn id => conn hash
my $conn_seq = 0;
my @sched;               # sorted by due: {due, cid, kind => send|close|reset, bytes, close}

my @rl_times;            # timestamps of API requests inside the window
my @faults_publish;
my @faults_jobres;
my @records;
my %jobs;                # job id => job hash
my $next_job = FIRST_JOB_ID;

my $log_fh;

$SIG{PIPE} = 'IGNORE';
$SIG{TERM} = sub { $stop = 1 };
$SIG{INT}  = sub { $stop = 1 };

# ---------------------------------------------------------------- helpers --

sub now { return Time::HiRes::time() }

my @DAY = qw(Sun Mon Tue Wed Thu Fri Sat);
my @MON = qw(Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec);

sub http_date {
    my @g = gmtime(int(now()));
    return sprintf('%s, %02d %s %04d %02d:%02d:%02d GMT',
        $DAY[$g[6]], $g[3], $MON[$g[4]], $g[5] + 1900, $g[2], $g[1], $g[0]);
}

my %REASON = (
    100 => 'Continue', 200 => 'OK', 202 => 'Accepted', 204 => 'No Content',
    400 => 'Bad Request', 401 => 'Unauthorized', 403 => 'Forbidden',
    404 => 'Not Found', 405 => 'Method Not Allowed', 408 => 'Request Timeout',
    409 => 'Conflict', 411 => 'Length Required', 413 => 'Payload Too Large',
    415 => 'Unsupported Media Type', 417 => 'Expectation Failed',
    422 => 'Unprocessable Entity', 423 => 'Locked', 429 => 'Too Many Requests',
    431 => 'Request Header Fields Too Large', 500 => 'Internal Server Error',
    501 => 'Not Implemented', 502 => 'Bad Gateway', 503 => 'Service Unavailable',
    504 => 'Gateway Timeout', 505 => 'HTTP Version Not Supported',
);

sub reason { return $REASON{ $_[0] } // 'Unknown' }

sub rand_hex {
    my ($n) = @_;
    return join '', map { sprintf '%x', int(rand(16)) } 1 .. $n;
}

# Text for JSON records: valid UTF-8 becomes characters, otherwise Latin-1.
sub as_text {
    my ($s) = @_;
    return undef unless defined $s;
    my $t = $s;
    utf8::decode($t) or return $s;
    return $t;
}

# JSON type of a decoded scalar, without stringifying it (JSON::PP looks at
# the scalar's flags when encoding).
sub scalar_json {
    my ($v) = @_;
    my $e = eval { $JSON_ONE->encode($v) };
    return defined $e ? $e : '';
}

sub is_json_string {
    my ($v) = @_;
    return 0 if !defined $v || ref $v;
    return scalar_json($v) =~ /^"/ ? 1 : 0;
}

sub is_json_int {
    my ($v) = @_;
    return 0 if !defined $v || ref $v;
    return scalar_json($v) =~ /^-?\d{1,15}$/ ? 1 : 0;
}

sub is_json_number {
    my ($v) = @_;
    return 0 if !defined $v || ref $v;
    return scalar_json($v) =~ /^-?\d{1,15}(?:\.\d+)?(?:[eE][-+]?\d+)?$/ ? 1 : 0;
}

sub is_bool_like {
    my ($v) = @_;
    return 1 if JSON::PP::is_bool($v);
    return 1 if defined $v && !ref $v && $v =~ /^[01]$/;
    return 0;
}

sub truthy { my ($v) = @_; return ($v && (!ref $v || JSON::PP::is_bool($v))) ? 1 : 0 }

sub media_type {
    my ($v) = @_;
    return '' unless defined $v;
    my $m = lc $v;
    $m =~ s/;.*//s;
    $m =~ s/^\s+|\s+$//g;
    return $m;
}

# ------------------------------------------------------------ rate limit --

sub rl_prune {
    my ($t) = @_;
    shift @rl_times while @rl_times && $rl_times[0] <= $t - $cfg{window};
}

sub rl_hit {
    my ($t) = @_;
    push @rl_times, $t;
    rl_prune($t);
}

sub rl_remaining {
    my $r = $cfg{limit} - scalar(@rl_times);
    return $r < 0 ? 0 : $r;
}

sub rl_reset_secs {
    my ($t) = @_;
    return 1 unless @rl_times;
    my $s = POSIX::ceil($rl_times[0] + $cfg{window} - $t);
    return $s < 1 ? 1 : $s;
}

# -------------------------------------------------------------- recording --

sub add_record {
    my ($rec) = @_;
    push @records, $rec;
    shift @records while @records > MAX_RECORDS;
    if ($log_fh) {
        print {$log_fh} $JSON->encode($rec), "\n";
    }
}

# -------------------------------------------------------------- listening --

sub open_listener {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(
        LocalAddr => $opt{host},
        LocalPort => $port,
        Proto     => 'tcp',
        Listen    => 256,
        ReuseAddr => 1,
        Blocking  => 0,
    );
    return $s;
}

sub go_down {
    my ($ms, $mode, $keep) = @_;
    $down_until = now() + $ms / 1000;
    $down_mode  = $mode;
    for my $c (values %conns) {
        next if $keep && $c->{id} == $keep->{id};
        close_conn($c);
    }
    if ($mode eq 'refuse' && $listener) {
        close($listener);
        $listener = undef;
    }
}

sub maybe_reopen {
    my ($t) = @_;
    return if $listener || $t < $down_until;
    my $s = open_listener($bound_port);
    $listener = $s if $s;   # else retry on the next loop iteration
}

sub do_accept {
    while (1) {
        my $s = $listener->accept;
        last unless $s;
        if (now() < $down_until || scalar(keys %conns) >= $opt{max_conns}) {
            close($s);
            next;
        }
        $s->blocking(0);
        setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
        my $c = {
            id    => ++$conn_seq,
            sock  => $s,
            rbuf  => '',
            wbuf  => '',
            st    => 'head',
            req   => undef,
            busy  => 0,       # a delayed answer is pending
            after => undef,   # undef | 'close' | 'reset' once wbuf drains
            eof   => 0,
            last  => now(),
        };
        $conns{ $c->{id} } = $c;
    }
}

# ------------------------------------------------------------ connections --

sub close_conn {
    my ($c, $rst) = @_;
    return unless $conns{ $c->{id} };
    delete $conns{ $c->{id} };
    if ($rst) {
        setsockopt($c->{sock}, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    }
    close($c->{sock});
}

sub alive { my ($c) = @_; return $conns{ $c->{id} } ? 1 : 0 }

sub maybe_finish {
    my ($c) = @_;
    return unless alive($c);
    return if $c->{busy} || length $c->{wbuf};
    if ($c->{after}) {
        close_conn($c, $c->{after} eq 'reset');
    } elsif ($c->{eof}) {
        close_conn($c);
    }
}

sub try_write {
    my ($c) = @_;
    return unless alive($c);
    while (length $c->{wbuf}) {
        my $n = syswrite($c->{sock}, $c->{wbuf});
        if (!defined $n) {
            return if $!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR};
            close_conn($c);
            return;
        }
        substr($c->{wbuf}, 0, $n, '');
        $c->{last} = now();
    }
    maybe_finish($c);
}

sub do_read {
    my ($c) = @_;
    my $n = sysread($c->{sock}, $c->{rbuf}, 65536, length $c->{rbuf});
    if (!defined $n) {
        return if $!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR};
        close_conn($c);
        return;
    }
    $c->{last} = now();
    $c->{eof} = 1 if $n == 0;
    process_conn($c);
    maybe_finish($c) if alive($c) && $c->{eof};
}

sub want_read {
    my ($c) = @_;
    return 0 if $c->{eof} || $c->{after};
    return 0 if length($c->{rbuf}) > $opt{max_body} + MAX_HEADER_BYTES + 65536;
    return 1;
}

sub schedule {
    my ($ev) = @_;
    push @sched, $ev;
    @sched = sort { $a->{due} <=> $b->{due} } @sched;
}

sub run_scheduled {
    my ($t) = @_;
    while (@sched && $sched[0]{due} <= $t) {
        my $ev = shift @sched;
        my $c = $conns{ $ev->{cid} } or next;
        $c->{busy} = 0;
        if ($ev->{kind} eq 'send') {
            $c->{wbuf} .= $ev->{bytes};
            $c->{after} = 'close' if $ev->{close};
        } else {
            $c->{after} = $ev->{kind};
        }
        try_write($c);
        process_conn($c) if alive($c);
        maybe_finish($c) if alive($c);
    }
}

sub sweep_idle {
    my ($t) = @_;
    for my $c (values %conns) {
        next if $c->{busy} || length $c->{wbuf};
        close_conn($c) if $t - $c->{last} > $opt{idle_timeout};
    }
}

# ---------------------------------------------------------------- answers --

sub build_response {
    my ($status, $hdrs, $body, $close, $v10_keepalive) = @_;
    $body //= '';
    my $h = "HTTP/1.1 $status " . reason($status) . "\r\n";
    $h .= 'Date: ' . http_date() . "\r\n";
    $h .= "Server: dato-mock\r\n";
    for (my $i = 0; $i < @$hdrs; $i += 2) {
        $h .= "$hdrs->[$i]: $hdrs->[$i + 1]\r\n";
    }
    $h .= 'Content-Length: ' . length($body) . "\r\n";
    if ($close) {
        $h .= "Connection: close\r\n";
    } elsif ($v10_keepalive) {
        $h .= "Connection: keep-alive\r\n";
    }
    return $h . "\r\n" . $body;
}

sub wants_close {
    my ($req) = @_;
    return 1 if $req->{force_close};
    my $conn = lc($req->{headers}{connection} // '');
    my %tok = map { (s/^\s+|\s+$//gr, 1) } split /,/, $conn;
    return 1 if $tok{close};
    return 1 if $req->{version} eq '1.0' && !$tok{'keep-alive'};
    return 0;
}

# $ans = {status, headers => [..], body => bytes, delay => s, drop => close|reset, close => 1}
sub send_answer {
    my ($c, $req, $ans) = @_;
    my $delay = $ans->{delay} // 0;
    if ($ans->{drop}) {
        if ($delay > 0) {
            $c->{busy} = 1;
            schedule({ due => now() + $delay, cid => $c->{id}, kind => $ans->{drop} });
        } else {
            $c->{after} = $ans->{drop};
            try_write($c);   # flush earlier pipelined answers / 100 Continue first
            maybe_finish($c);
        }
        return;
    }
    my $close = wants_close($req) || $ans->{close} ? 1 : 0;
    my $v10ka = (!$close && $req->{version} eq '1.0') ? 1 : 0;
    my $bytes = build_response($ans->{status}, $ans->{headers} // [], $ans->{body}, $close, $v10ka);
    if ($delay > 0) {
        $c->{busy} = 1;
        schedule({ due => now() + $delay, cid => $c->{id}, kind => 'send', bytes => $bytes, close => $close });
    } else {
        $c->{wbuf} .= $bytes;
        $c->{after} = 'close' if $close;
        try_write($c);
    }
}

sub plain_error {
    my ($c, $status, $msg) = @_;
    my $body = "$status " . reason($status) . ": $msg\n";
    $c->{wbuf} .= build_response($status, ['Content-Type' => 'text/plain'], $body, 1);
    $c->{after} = 'close';
    $c->{rbuf}  = '';
    try_write($c);
}

sub error_doc {
    my ($code, $details, $transient) = @_;
    my $attr = {
        code    => $code,
        doc_url => "https://www.datocms.com/docs/content-management-api/errors#$code",
        details => $details // {},
    };
    $attr->{transient} = JSON::PP::true if $transient;
    return { data => [ { id => rand_hex(6), type => 'api_error', attributes => $attr } ] };
}

sub api_headers {
    my ($remaining) = @_;
    return (
        'X-RateLimit-Limit'     => $cfg{limit},
        'X-RateLimit-Remaining' => $remaining,
        'X-Request-Id'          => rand_hex(20),
        'X-Api-Version'         => '3',
    );
}

sub api_error {
    my ($status, $code, $details, %o) = @_;
    my $remaining = exists $o{remaining} ? $o{remaining} : rl_remaining();
    my @h = ('Content-Type' => 'application/json', api_headers($remaining));
    push @h, 'X-RateLimit-Reset' => $o{reset} if defined $o{reset};
    return {
        status  => $status,
        headers => \@h,
        body    => $JSON->encode(error_doc($code, $details, $o{transient})),
    };
}

sub api_ok {
    my ($status, $doc) = @_;
    return {
        status  => $status,
        headers => [ 'Content-Type' => 'application/json; charset=utf-8', api_headers(rl_remaining()) ],
        body    => $JSON->encode($doc),
    };
}

# --------------------------------------------------------------- parsing --

# Returns a complete request hash, or undef (need more data / error handled).
sub parse_one {
    my ($c) = @_;
    if ($c->{st} eq 'head') {
        $c->{rbuf} =~ s/\A(?:\r?\n)+//;
        unless ($c->{rbuf} =~ /\r?\n\r?\n/) {
            plain_error($c, 431, 'header section too large')
                if length $c->{rbuf} > MAX_HEADER_BYTES;
            return undef;
        }
        my ($hs, $he) = ($-[0], $+[0]);
        if ($hs > MAX_HEADER_BYTES) {
            plain_error($c, 431, 'header section too large');
            return undef;
        }
        my $head = substr($c->{rbuf}, 0, $he, '');
        $head = substr($head, 0, $hs);
        my @lines = split /\r?\n/, $head;
        my $rl = shift @lines;
        unless (defined $rl && $rl =~ m{^([!#\$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/(\d)\.(\d)$}) {
            plain_error($c, 400, 'malformed request line');
            return undef;
        }
        my ($method, $target, $maj, $min) = ($1, $2, $3, $4);
        if ($maj != 1 || $min > 1) {
            plain_error($c, 505, 'only HTTP/1.0 and HTTP/1.1 are supported');
            return undef;
        }
        if (@lines > MAX_HEADERS) {
            plain_error($c, 431, 'too many header fields');
            return undef;
        }
        my %h;
        for my $l (@lines) {
            unless ($l =~ /^([!#\$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/s) {
                plain_error($c, 400, 'malformed header line');
                return undef;
            }
            my ($n, $v) = (lc $1, $2);
            $h{$n} = exists $h{$n} ? "$h{$n}, $v" : $v;
        }
        my $path = $target;
        $path =~ s/\?.*//s;
        my $req = {
            method  => $method,
            target  => $target,
            path    => $path,
            version => "$maj.$min",
            headers => \%h,
            body    => '',
        };
        $c->{req} = $req;

        my $need_body = 0;
        if (defined $h{'transfer-encoding'}) {
            my @codings = map { s/^\s+|\s+$//gr } split /,/, lc $h{'transfer-encoding'};
            unless (@codings && $codings[-1] eq 'chunked' && !grep { $_ ne 'chunked' && $_ ne 'identity' } @codings) {
                plain_error($c, 501, 'unsupported transfer-encoding');
                return undef;
            }
            $req->{force_close} = 1 if defined $h{'content-length'};
            $c->{st}      = 'csize';
            $c->{clen}    = 0;
            $need_body    = 1;
        } elsif (defined $h{'content-length'}) {
            my @v = map { s/^\s+|\s+$//gr } split /,/, $h{'content-length'};
            my %u = map { $_ => 1 } @v;
            unless (@v && keys(%u) == 1 && $v[0] =~ /^\d{1,15}$/) {
                plain_error($c, 400, 'invalid content-length');
                return undef;
            }
            my $cl = 0 + $v[0];
            if ($cl > $opt{max_body}) {
                too_large($c, $req);
                return undef;
            }
            $c->{clen} = $cl;
            if ($cl > 0) {
                $c->{st}   = 'body';
                $need_body = 1;
            }
        }
        if ($need_body && lc($h{expect} // '') eq '100-continue' && $c->{rbuf} eq '') {
            $c->{wbuf} .= "HTTP/1.1 100 Continue\r\n\r\n";
            try_write($c);
            return undef unless alive($c);
        }
    }

    if ($c->{st} eq 'body') {
        return undef if length($c->{rbuf}) < $c->{clen};
        $c->{req}{body} = substr($c->{rbuf}, 0, $c->{clen}, '');
    } elsif ($c->{st} ne 'head') {
        return undef unless parse_chunked($c);
    }

    my $req = $c->{req};
    $c->{req} = undef;
    $c->{st}  = 'head';
    $req->{t} = now();
    return $req;
}

# Incremental chunked decoder; 1 = body complete, 0 = need more / error.
sub parse_chunked {
    my ($c) = @_;
    my $req = $c->{req};
    while (1) {
        if ($c->{st} eq 'csize') {
            my $i = index($c->{rbuf}, "\n");
            if ($i < 0) {
                plain_error($c, 400, 'chunk size line too long') if length $c->{rbuf} > 4096;
                return 0;
            }
            my $line = substr($c->{rbuf}, 0, $i + 1, '');
            $line =~ s/\r?\n\z//;
            $line =~ s/;.*//s;
            unless ($line =~ /^[ \t]*([0-9a-fA-F]{1,8})[ \t]*$/) {
                plain_error($c, 400, 'malformed chunk size');
                return 0;
            }
            my $n = hex $1;
            if ($n == 0) {
                $c->{st} = 'ctrailer';
                next;
            }
            if (length($req->{body}) + $n > $opt{max_body}) {
                too_large($c, $req);
                return 0;
            }
            $c->{cleft} = $n;
            $c->{st}    = 'cdata';
        } elsif ($c->{st} eq 'cdata') {
            return 0 if length($c->{rbuf}) < $c->{cleft} + 2;
            $req->{body} .= substr($c->{rbuf}, 0, $c->{cleft}, '');
            my $crlf = substr($c->{rbuf}, 0, 2, '');
            if ($crlf ne "\r\n") {
                plain_error($c, 400, 'chunk data not followed by CRLF');
                return 0;
            }
            $c->{st} = 'csize';
        } elsif ($c->{st} eq 'ctrailer') {
            my $i = index($c->{rbuf}, "\n");
            if ($i < 0) {
                plain_error($c, 400, 'trailer too long') if length $c->{rbuf} > MAX_HEADER_BYTES;
                return 0;
            }
            my $line = substr($c->{rbuf}, 0, $i + 1, '');
            return 1 if $line =~ /^\r?\n\z/;
            # trailer fields are ignored
        } else {
            die "bad parser state $c->{st}";
        }
    }
}

sub too_large {
    my ($c, $req) = @_;
    $req->{t}           = now();
    $req->{force_close} = 1;
    $c->{rbuf}          = '';
    $c->{req}           = undef;
    $c->{st}            = 'head';
    if ($req->{path} =~ m{^/__mock/}) {
        plain_error($c, 413, "body larger than $opt{max_body} bytes");
        return;
    }
    rl_hit($req->{t});
    my $ans = api_error(413, 'INVALID_REQUEST', { message => "request body larger than $opt{max_body} bytes" });
    add_record(make_record($req, 413, [], undef));
    $ans->{close} = 1;
    send_answer($c, $req, $ans);
}

sub process_conn {
    my ($c) = @_;
    while (alive($c) && !$c->{busy} && !$c->{after}) {
        my $req = parse_one($c);
        last unless $req && alive($c);
        handle_request($c, $req);
    }
}

# --------------------------------------------------------------- routing --

sub handle_request {
    my ($c, $req) = @_;
    if ($req->{path} =~ m{^/__mock(?:/|$)}) {
        control_request($c, $req);
    } else {
        api_request($c, $req);
    }
}

sub make_record {
    my ($req, $status, $ids, $job) = @_;
    my %h = map { $_ => as_text($req->{headers}{$_}) } keys %{ $req->{headers} };
    my $env = $req->{headers}{'x-environment'};
    return {
        t       => $req->{t} + 0,
        method  => $req->{method},
        path    => as_text($req->{target}),
        headers => \%h,
        body    => as_text($req->{body}),
        status  => $status + 0,
        ids     => $ids,
        job     => defined $job ? "$job" : undef,
        env     => defined $env ? as_text($env) : undef,
    };
}

# Item ids, if the body looks like a bulk publish (regardless of validity).
sub extract_ids {
    my ($doc) = @_;
    my @ids;
    return \@ids unless ref $doc eq 'HASH'
        && ref $doc->{data} eq 'HASH'
        && ref $doc->{data}{relationships} eq 'HASH'
        && ref $doc->{data}{relationships}{items} eq 'HASH'
        && ref $doc->{data}{relationships}{items}{data} eq 'ARRAY';
    for my $it (@{ $doc->{data}{relationships}{items}{data} }) {
        next unless ref $it eq 'HASH' && defined $it->{id} && !ref $it->{id};
        push @ids, as_text("$it->{id}");
    }
    return \@ids;
}

sub try_decode_json {
    my ($bytes, $decoder) = @_;
    $decoder //= $JSON;
    my $doc;
    my $ok = eval { $doc = $decoder->decode($bytes); 1 };
    return $ok ? (1, $doc) : (0, undef);
}

sub api_request {
    my ($c, $req) = @_;
    my $t = $req->{t};
    rl_hit($t);

    my $route = 'other';
    my $job_id;
    my $action;
    if ($req->{method} eq 'POST'
        && $req->{path} =~ m{^/items/bulk/(publish|unpublish|move-to-stage)$})
    {
        $route  = 'publish';
        $action = $1;
    } elsif ($req->{method} eq 'GET' && $req->{path} =~ m{^/job-results/([^/]+)$}) {
        $route  = 'jobres';
        $job_id = $1;
    }

    my $fault;
    $fault = shift @faults_publish if $route eq 'publish' && @faults_publish;
    $fault = shift @faults_jobres  if $route eq 'jobres'  && @faults_jobres;
    $fault //= {};

    my @ids;
    my ($json_ok, $doc) = (0, undef);
    if ($route eq 'publish') {
        ($json_ok, $doc) = try_decode_json($req->{body}, $JSON_STRICT);
        # ids come from a second, independent decode so that stringifying
        # them cannot disturb the type checks done on $doc.
        @ids = @{ extract_ids(scalar((try_decode_json($req->{body}))[1])) } if $json_ok;
    }

    my $ans;
    my $rec_job = $route eq 'jobres' ? $job_id : undef;
    my $delay   = ($fault->{delay_ms} // 0) / 1000;

    if (defined $fault->{status}) {
        $ans = forced_answer($fault);
    } elsif (truthy($fault->{close}) || truthy($fault->{rst}) || truthy($fault->{reset})) {
        my $kind = truthy($fault->{close}) ? 'close' : 'reset';
        if (truthy($fault->{process})) {
            my $real = $route eq 'publish' ? publish_answer($req, $json_ok, $doc, $fault, $action)
                     : $route eq 'jobres'  ? jobres_answer($req, $job_id)
                     :                       other_answer($req);
            $rec_job = $real->{job} if $route eq 'publish';
        }
        $ans = { drop => $kind };
    } elsif ($route eq 'publish') {
        $ans = publish_answer($req, $json_ok, $doc, $fault, $action);
        $rec_job = $ans->{job};
    } elsif ($route eq 'jobres') {
        $ans = jobres_answer($req, $job_id);
    } else {
        $ans = other_answer($req);
    }

    add_record(make_record($req, $ans->{drop} ? 0 : $ans->{status}, \@ids, $rec_job));
    $ans->{delay} = $delay;
    send_answer($c, $req, $ans);
}

sub forced_answer {
    my ($f) = @_;
    my $st = 0 + $f->{status};
    if (truthy($f->{html})) {
        my $body = "<html><body><h1>$st " . reason($st) . "</h1></body></html>";
        my $remaining = $st == 429 ? 0 : rl_remaining();
        my @h = ('Content-Type' => 'text/html', api_headers($remaining));
        push @h, 'X-RateLimit-Reset' => int($f->{reset}) if defined $f->{reset};
        push @h, 'X-RateLimit-Reset' => 1 if $st == 429 && !defined $f->{reset};
        return { status => $st, headers => \@h, body => $body };
    }
    my $code = $f->{code} // default_code($st);
    my %o;
    $o{transient} = 1 if truthy($f->{transient});
    if ($st == 429) {
        $o{reset}     = defined $f->{reset} ? int($f->{reset}) : 1;
        $o{remaining} = 0;
    } elsif (defined $f->{reset}) {
        $o{reset} = int($f->{reset});
    }
    my $details = $f->{details} // { message => 'fault injected by dato_mock' };
    return api_error($st, $code, $details, %o);
}

sub default_code {
    my ($st) = @_;
    return 'RATE_LIMIT_EXCEEDED'          if $st == 429;
    return 'INVALID_AUTHORIZATION_HEADER' if $st == 401;
    return 'NOT_FOUND'                    if $st == 404;
    return 'INVALID_FIELD'                if $st == 422;
    return 'SERVICE_UNAVAILABLE'          if $st == 502 || $st == 503 || $st == 504;
    return 'INTERNAL_SERVER_ERROR'        if $st >= 500;
    return 'INVALID_REQUEST';
}

# Checks 1-4 common to all documented endpoints; returns an answer or undef.
sub common_checks {
    my ($req) = @_;
    my $h = $req->{headers};
    if (@rl_times > $cfg{limit}) {
        return api_error(429, 'RATE_LIMIT_EXCEEDED',
            { limit => $cfg{limit} + 0, window_seconds => $cfg{window} + 0 },
            reset => rl_reset_secs($req->{t}), remaining => 0);
    }
    my $auth = $h->{authorization};
    if (!defined $auth || !grep { $auth eq "Bearer $_" } @{ $cfg{token} }) {
        return api_error(401, 'INVALID_AUTHORIZATION_HEADER',
            { message => defined $auth ? 'invalid API token or malformed Authorization header'
                                       : 'missing Authorization header' });
    }
    if (!defined $h->{accept} || media_type($h->{accept}) ne 'application/json') {
        return api_error(422, 'INVALID_ACCEPT_HEADER',
            { expected => 'application/json', received => as_text($h->{accept}) });
    }
    if (!defined $h->{'x-api-version'} || $h->{'x-api-version'} ne '3') {
        return api_error(422, 'INVALID_API_VERSION',
            { expected => '3', received => as_text($h->{'x-api-version'}) });
    }
    return undef;
}

sub other_answer {
    my ($req) = @_;
    if (@rl_times > $cfg{limit}) {
        return api_error(429, 'RATE_LIMIT_EXCEEDED',
            { limit => $cfg{limit} + 0, window_seconds => $cfg{window} + 0 },
            reset => rl_reset_secs($req->{t}), remaining => 0);
    }
    return api_error(404, 'INVALID_ENDPOINT',
        { method => $req->{method}, path => as_text($req->{path}) });
}

sub shape_error {
    my ($msg) = @_;
    return api_error(422, 'INVALID_FORMAT', { messages => [$msg] });
}

sub check_keys {
    my ($obj, $ptr, @allowed) = @_;
    my %ok = map { $_ => 1 } @allowed;
    for my $k (@allowed) {
        return "$ptr: missing required key \"$k\"" unless exists $obj->{$k};
    }
    for my $k (sort keys %$obj) {
        return "$ptr: unexpected key \"" . as_text($k) . '"' unless $ok{$k};
    }
    return undef;
}

sub json_kind {
    my ($v) = @_;
    return 'null'    unless defined $v;
    return 'object'  if ref $v eq 'HASH';
    return 'array'   if ref $v eq 'ARRAY';
    return 'boolean' if JSON::PP::is_bool($v);
    return is_json_string($v) ? 'string' : 'number';
}

sub valid_record_id {
    my ($id) = @_;
    if ($id =~ /^[1-9][0-9]{0,14}\z/) {
        return $id <= MAX_RECORD_ID ? 1 : 0;
    }
    return $id =~ /^[A-Za-z0-9_-]{21}[AQgw]\z/ ? 1 : 0;
}

# the bulk actions: their operation type, and whether they take attributes
my %BULK = (
    'publish'       => 'item_bulk_publish_operation',
    'unpublish'     => 'item_bulk_unpublish_operation',
    'move-to-stage' => 'item_bulk_move_to_stage_operation',
);

sub publish_answer {
    my ($req, $json_ok, $doc, $fault, $action) = @_;
    $action //= 'publish';
    my $optype = $BULK{$action};
    my $err = common_checks($req);
    return $err if $err;

    my $h = $req->{headers};
    my $ct = media_type($h->{'content-type'});
    if ($ct ne 'application/vnd.api+json' && $ct ne 'application/json') {
        return api_error(422, 'INVALID_CONTENT_TYPE_HEADER',
            { expected => 'application/vnd.api+json', received => as_text($h->{'content-type'}) });
    }

    unless ($json_ok) {
        return api_error(422, 'INVALID_JSON_BODY', { message => 'request body is not valid JSON' });
    }

    # --- shape
    return shape_error('#: expected an object, got ' . json_kind($doc)) unless ref $doc eq 'HASH';
    my $m = check_keys($doc, '#', 'data');
    return shape_error($m) if $m;
    my $d = $doc->{data};
    return shape_error('#/data: expected an object, got ' . json_kind($d)) unless ref $d eq 'HASH';
    return shape_error('#/data: missing required key "type"') unless exists $d->{type};
    return shape_error('#/data/type: expected a string, got ' . json_kind($d->{type}))
        unless is_json_string($d->{type});
    if ($d->{type} ne $optype) {
        return api_error(422, 'INVALID_TYPE',
            { field => 'type', expected => $optype, received => as_text($d->{type}) });
    }
    $m = $action eq 'move-to-stage'
       ? check_keys($d, '#/data', 'type', 'attributes', 'relationships')
       : check_keys($d, '#/data', 'type', 'relationships');
    return shape_error($m) if $m;
    my $stage;
    if ($action eq 'move-to-stage') {
        my $a = $d->{attributes};
        return shape_error('#/data/attributes: expected an object, got ' . json_kind($a))
            unless ref $a eq 'HASH';
        $m = check_keys($a, '#/data/attributes', 'stage');
        return shape_error($m) if $m;
        return shape_error('#/data/attributes/stage: expected a non-empty string, got '
                           . json_kind($a->{stage}))
            unless is_json_string($a->{stage}) && length $a->{stage};
        $stage = as_text($a->{stage});
    }
    my $r = $d->{relationships};
    return shape_error('#/data/relationships: expected an object, got ' . json_kind($r)) unless ref $r eq 'HASH';
    $m = check_keys($r, '#/data/relationships', 'items');
    return shape_error($m) if $m;
    my $it = $r->{items};
    return shape_error('#/data/relationships/items: expected an object, got ' . json_kind($it)) unless ref $it eq 'HASH';
    $m = check_keys($it, '#/data/relationships/items', 'data');
    return shape_error($m) if $m;
    my $list = $it->{data};
    return shape_error('#/data/relationships/items/data: expected an array, got ' . json_kind($list))
        unless ref $list eq 'ARRAY';
    for my $i (0 .. $#$list) {
        my $e = $list->[$i];
        my $p = "#/data/relationships/items/data/$i";
        return shape_error("$p: expected an object, got " . json_kind($e)) unless ref $e eq 'HASH';
        $m = check_keys($e, $p, 'type', 'id');
        return shape_error($m) if $m;
        return shape_error("$p/type: expected the string \"item\"")
            unless is_json_string($e->{type}) && $e->{type} eq 'item';
        return shape_error("$p/id: expected a string, got " . json_kind($e->{id}))
            unless is_json_string($e->{id});
    }

    # --- count
    my $n = scalar @$list;
    if ($n == 0) {
        return shape_error("#/data/relationships/items/data: item count 0 is below the minimum of 1");
    }
    if ($n > MAX_ITEMS) {
        return shape_error("#/data/relationships/items/data: item count $n exceeds the maximum of " . MAX_ITEMS);
    }

    # --- duplicates
    my %seen;
    for my $i (0 .. $#$list) {
        my $id = $list->[$i]{id};
        if ($seen{$id}++) {
            return shape_error("#/data/relationships/items/data/$i/id: duplicate id \"" . as_text($id) . '"');
        }
    }

    # --- id format
    for my $i (0 .. $#$list) {
        my $id = $list->[$i]{id};
        next if valid_record_id($id);
        return api_error(422, 'INVALID_FIELD', {
            field   => "relationships.items.data[$i].id",
            code    => 'VALIDATION_INVALID_ID',
            value   => as_text($id),
            message => 'not a valid DatoCMS record ID',
        });
    }

    # --- refuse_ids: the first listed id in call order refuses the call
    for my $i (0 .. $#$list) {
        my $rule = $cfg{refuse_ids}{ $list->[$i]{id} } or next;
        return api_error($rule->{status}, $rule->{code},
                         $rule->{details} // { message => 'refused by dato_mock (refuse_ids)' });
    }

    # --- success: create the job
    my @ids = map { as_text($_->{id}) } @$list;
    my @fail = grep { $cfg{job_fail_ids}{$_} } @ids;
    my $js = ref $fault->{job} eq 'HASH' ? $fault->{job} : {};
    my $jid;
    if (defined $fault->{job_id}) {
        $jid = '' . $fault->{job_id};
    } else {
        $jid = '' . $next_job++;
    }
    $jobs{$jid} = {
        id      => $jid,
        action  => $action,
        stage   => $stage,
        items   => $n,
        ids     => \@ids,
        fail_ids => \@fail,
        polls   => defined $js->{polls} ? int($js->{polls}) : $cfg{job_polls} + 0,
        failed  => defined $js->{failed} ? int($js->{failed}) : scalar(@fail),
        successful => defined $js->{successful} ? int($js->{successful}) : undef,
        status  => defined $js->{status} ? int($js->{status})
                 : @fail ? $cfg{job_fail_status} + 0 : 200,
        code    => defined $js->{code} ? $js->{code} : @fail ? $cfg{job_fail_code} : undef,
        seen    => 0,
        created => $req->{t} + 0,
        env     => defined $h->{'x-environment'} ? as_text($h->{'x-environment'}) : undef,
    };
    my $ans = api_ok(202, { data => { type => 'job', id => $jid } });
    $ans->{job} = $jid;
    return $ans;
}

sub jobres_answer {
    my ($req, $jid) = @_;
    my $err = common_checks($req);
    return $err if $err;
    my $job = $jobs{$jid};
    unless ($job) {
        return api_error(404, 'NOT_FOUND', { message => 'job result not found', id => as_text($jid) });
    }
    $job->{seen}++;
    if ($job->{polls} < 0 || $job->{seen} <= $job->{polls}) {
        return api_error(404, 'NOT_FOUND', { message => 'job still in progress', id => $jid });
    }
    my $st = $job->{status};
    my $payload;
    if ($st >= 200 && $st <= 299) {
        my $succ = $job->{items} - $job->{failed};
        $succ = 0 if $succ < 0;
        $succ = $job->{successful} if defined $job->{successful};
        $payload = { data => [], meta => { successful => $succ + 0, failed => $job->{failed} + 0 } };
    } else {
        $payload = error_doc($job->{code} // ($st >= 500 ? 'INTERNAL_SERVER_ERROR' : 'INVALID_FIELD'),
                             { message => 'job failed (scripted by dato_mock)' });
    }
    return api_ok(200, { data => { type => 'job_result', id => $jid,
                                   attributes => { status => $st + 0, payload => $payload } } });
}

# --------------------------------------------------------------- control --

sub ctl_json {
    my ($c, $req, $status, $doc, %o) = @_;
    send_answer($c, $req, {
        status  => $status,
        headers => [ 'Content-Type' => 'application/json' ],
        body    => $JSON->encode($doc),
        close   => $o{close},
    });
}

sub ctl_bad {
    my ($c, $req, $status, $msg) = @_;
    ctl_json($c, $req, $status, { error => $msg });
}

my %FAULT_KEYS = map { $_ => 1 } qw(status reset rst html code transient details delay_ms close process job job_id on);
my %JOB_KEYS   = map { $_ => 1 } qw(polls failed successful status code);
my %REFUSE_KEYS = map { $_ => 1 } qw(status code details);

sub validate_fault {
    my ($f, $i) = @_;
    my $p = "fault[$i]";
    return "$p: expected an object" unless ref $f eq 'HASH';
    for my $k (sort keys %$f) {
        return "$p: unknown key \"$k\"" unless $FAULT_KEYS{$k};
    }
    my $on = $f->{on} // 'publish';
    return "$p: \"on\" must be \"publish\" or \"job-results\""
        unless !ref $on && ($on eq 'publish' || $on eq 'job-results');
    if (defined $f->{status}) {
        return "$p: status must be an integer 400..599"
            unless is_json_int($f->{status}) && $f->{status} >= 400 && $f->{status} <= 599;
        return "$p: with status, reset must be a number of seconds >= 0"
            if defined $f->{reset} && !(is_json_number($f->{reset}) && $f->{reset} >= 0);
        for my $k (qw(close rst job job_id process)) {
            return "$p: \"$k\" cannot be combined with \"status\"" if exists $f->{$k};
        }
    } else {
        for my $k (qw(html code transient details)) {
            return "$p: \"$k\" needs \"status\"" if exists $f->{$k};
        }
        return "$p: without status, reset must be a boolean (TCP RST)"
            if exists $f->{reset} && !is_bool_like($f->{reset});
    }
    for my $k (qw(html transient close rst process)) {
        return "$p: \"$k\" must be a boolean" if exists $f->{$k} && !is_bool_like($f->{$k});
    }
    return "$p: code must be a string" if exists $f->{code} && !is_json_string($f->{code});
    return "$p: details must be an object" if exists $f->{details} && ref $f->{details} ne 'HASH';
    my $drop = truthy($f->{close}) + truthy($f->{rst}) + (defined $f->{status} ? 0 : truthy($f->{reset}));
    return "$p: close and reset/rst are mutually exclusive" if $drop > 1;
    return "$p: \"process\" needs close or reset" if truthy($f->{process}) && !$drop;
    if (exists $f->{delay_ms}) {
        return "$p: delay_ms must be a number 0..600000"
            unless is_json_number($f->{delay_ms}) && $f->{delay_ms} >= 0 && $f->{delay_ms} <= 600000;
    }
    if (exists $f->{job}) {
        return "$p: \"job\" is only valid for publish faults" if $on ne 'publish';
        my $j = $f->{job};
        return "$p: job must be an object" unless ref $j eq 'HASH';
        for my $k (sort keys %$j) {
            return "$p: job: unknown key \"$k\"" unless $JOB_KEYS{$k};
        }
        return "$p: job.polls must be an integer >= -1"
            if exists $j->{polls} && !(is_json_int($j->{polls}) && $j->{polls} >= -1);
        for my $k (qw(failed successful)) {
            return "$p: job.$k must be an integer"
                if exists $j->{$k} && !is_json_int($j->{$k});
        }
        return "$p: job.status must be an integer 100..599"
            if exists $j->{status} && !(is_json_int($j->{status}) && $j->{status} >= 100 && $j->{status} <= 599);
        return "$p: job.code must be a string" if exists $j->{code} && !is_json_string($j->{code});
    }
    if (exists $f->{job_id}) {
        return "$p: \"job_id\" is only valid for publish faults" if $on ne 'publish';
        return "$p: job_id must be a string of 1.." . MAX_JOB_ID_LEN . ' characters'
            unless is_json_string($f->{job_id}) && length($f->{job_id}) >= 1
                && length($f->{job_id}) <= MAX_JOB_ID_LEN;
    }
    return undef;
}

# POST /__mock/config "refuse_ids" and "job_fail_*": an error message or undef
sub validate_record_rules {
    my ($doc) = @_;
    if (exists $doc->{refuse_ids}) {
        my $r = $doc->{refuse_ids};
        return 'refuse_ids must be an object {"<record id>":{...},...}' unless ref $r eq 'HASH';
        for my $id (sort keys %$r) {
            my $q = 'refuse_ids["' . as_text($id) . '"]';
            return "$q: not a valid record id" unless valid_record_id($id);
            my $e = $r->{$id};
            return "$q: expected an object" unless ref $e eq 'HASH';
            for my $k (sort keys %$e) {
                return "$q: unknown key \"" . as_text($k) . '"' unless $REFUSE_KEYS{$k};
            }
            return "$q: status must be an integer 400..499 other than 429"
                if exists $e->{status} && !(is_json_int($e->{status}) && $e->{status} >= 400
                                            && $e->{status} <= 499 && $e->{status} != 429);
            return "$q: code must be a string"
                if exists $e->{code} && !is_json_string($e->{code});
            return "$q: details must be an object"
                if exists $e->{details} && ref $e->{details} ne 'HASH';
        }
    }
    for my $k (qw(job_fail_status job_fail_code)) {
        return "$k needs job_fail_ids in the same call"
            if exists $doc->{$k} && !exists $doc->{job_fail_ids};
    }
    if (exists $doc->{job_fail_ids}) {
        my $l = $doc->{job_fail_ids};
        return 'job_fail_ids must be an array of record ids' unless ref $l eq 'ARRAY';
        for my $i (0 .. $#$l) {
            return "job_fail_ids[$i]: not a valid record id"
                unless is_json_string($l->[$i]) && valid_record_id($l->[$i]);
        }
        return 'job_fail_status must be an integer 100..599'
            if exists $doc->{job_fail_status}
                && !(is_json_int($doc->{job_fail_status}) && $doc->{job_fail_status} >= 100
                     && $doc->{job_fail_status} <= 599);
        return 'job_fail_code must be a string'
            if exists $doc->{job_fail_code} && !is_json_string($doc->{job_fail_code});
    }
    return undef;
}

sub apply_record_rules {
    my ($doc) = @_;
    if (exists $doc->{refuse_ids}) {
        my %r;
        while (my ($id, $e) = each %{ $doc->{refuse_ids} }) {
            $r{$id} = {
                status  => defined $e->{status} ? int($e->{status}) : 422,
                code    => defined $e->{code} ? '' . $e->{code} : 'INVALID_FIELD',
                (defined $e->{details} ? (details => $e->{details}) : ()),
            };
        }
        $cfg{refuse_ids} = \%r;
    }
    if (exists $doc->{job_fail_ids}) {
        $cfg{job_fail_ids}    = { map { ('' . $_ => 1) } @{ $doc->{job_fail_ids} } };
        $cfg{job_fail_status} = defined $doc->{job_fail_status} ? int($doc->{job_fail_status}) : 200;
        $cfg{job_fail_code}   = defined $doc->{job_fail_code} ? '' . $doc->{job_fail_code} : undef;
    }
}

sub config_doc {
    return {
        limit     => $cfg{limit} + 0,
        window    => $cfg{window} + 0,
        job_polls => $cfg{job_polls} + 0,
        token     => $cfg{token}[0],
        tokens    => [ @{ $cfg{token} } ],
        port      => $bound_port + 0,
        down_ms   => ($down_until > now() ? int(($down_until - now()) * 1000) : 0),
        down_mode => $down_mode,
        refuse_ids      => $cfg{refuse_ids},
        job_fail_ids    => [ sort keys %{ $cfg{job_fail_ids} } ],
        job_fail_status => $cfg{job_fail_status} + 0,
        job_fail_code   => $cfg{job_fail_code},
    };
}

sub control_request {
    my ($c, $req) = @_;
    my ($m, $p) = ($req->{method}, $req->{path});

    if ($p eq '/__mock/faults' && $m eq 'POST') {
        my ($ok, $doc) = try_decode_json($req->{body});
        return ctl_bad($c, $req, 400, 'body is not valid JSON') unless $ok;
        $doc = [$doc] if ref $doc eq 'HASH';
        return ctl_bad($c, $req, 400, 'expected a JSON array of fault objects') unless ref $doc eq 'ARRAY';
        for my $i (0 .. $#$doc) {
            my $e = validate_fault($doc->[$i], $i);
            return ctl_bad($c, $req, 400, $e) if $e;
        }
        for my $f (@$doc) {
            if (($f->{on} // 'publish') eq 'job-results') { push @faults_jobres, $f }
            else                                          { push @faults_publish, $f }
        }
        return ctl_json($c, $req, 200, { queued => scalar(@$doc),
            pending => scalar(@faults_publish), pending_job_results => scalar(@faults_jobres) });
    }
    if ($p eq '/__mock/faults' && $m eq 'GET') {
        return ctl_json($c, $req, 200, { publish => \@faults_publish, 'job-results' => \@faults_jobres });
    }
    if ($p eq '/__mock/config' && $m eq 'POST') {
        my ($ok, $doc) = try_decode_json($req->{body});
        return ctl_bad($c, $req, 400, 'body is not valid JSON') unless $ok;
        return ctl_bad($c, $req, 400, 'expected a JSON object') unless ref $doc eq 'HASH';
        my %known = map { $_ => 1 } qw(limit window job_polls token down_ms down_mode
                                       refuse_ids job_fail_ids job_fail_status job_fail_code);
        for my $k (sort keys %$doc) {
            return ctl_bad($c, $req, 400, "unknown config key \"$k\"") unless $known{$k};
        }
        return ctl_bad($c, $req, 400, 'limit must be an integer >= 1')
            if exists $doc->{limit} && !(is_json_int($doc->{limit}) && $doc->{limit} >= 1);
        return ctl_bad($c, $req, 400, 'window must be a number > 0')
            if exists $doc->{window} && !(is_json_number($doc->{window}) && $doc->{window} > 0);
        return ctl_bad($c, $req, 400, 'job_polls must be an integer >= -1')
            if exists $doc->{job_polls} && !(is_json_int($doc->{job_polls}) && $doc->{job_polls} >= -1);
        return ctl_bad($c, $req, 400, 'token must be a string or a non-empty array of strings')
            if exists $doc->{token} && !is_json_string($doc->{token})
                && !(ref $doc->{token} eq 'ARRAY' && @{ $doc->{token} }
                     && !grep { !is_json_string($_) } @{ $doc->{token} });
        return ctl_bad($c, $req, 400, 'down_ms must be a number 0..600000')
            if exists $doc->{down_ms} && !(is_json_number($doc->{down_ms}) && $doc->{down_ms} >= 0 && $doc->{down_ms} <= 600000);
        return ctl_bad($c, $req, 400, 'down_mode must be "refuse" or "close"')
            if exists $doc->{down_mode} && !(is_json_string($doc->{down_mode}) && $doc->{down_mode} =~ /^(?:refuse|close)\z/);
        my $rerr = validate_record_rules($doc);
        return ctl_bad($c, $req, 400, $rerr) if $rerr;
        apply_record_rules($doc);
        $cfg{limit}     = 0 + $doc->{limit}     if exists $doc->{limit};
        $cfg{window}    = 0 + $doc->{window}    if exists $doc->{window};
        $cfg{job_polls} = 0 + $doc->{job_polls} if exists $doc->{job_polls};
        $cfg{token}     = [ map { '' . $_ } ref $doc->{token} ? @{ $doc->{token} } : $doc->{token} ]
            if exists $doc->{token};
        my $down = $doc->{down_ms} // 0;
        if ($down > 0) {
            go_down($down, $doc->{down_mode} // 'refuse', $c);
            return ctl_json($c, $req, 200, config_doc(), close => 1);
        }
        return ctl_json($c, $req, 200, config_doc());
    }
    if ($p eq '/__mock/config' && $m eq 'GET') {
        return ctl_json($c, $req, 200, config_doc());
    }
    if ($p eq '/__mock/requests' && $m eq 'GET') {
        return ctl_json($c, $req, 200, \@records);
    }
    if ($p eq '/__mock/reset' && $m eq 'POST') {
        @records        = ();
        @faults_publish = ();
        @faults_jobres  = ();
        @rl_times       = ();
        clear_record_rules();
        return ctl_json($c, $req, 200, { ok => JSON::PP::true, next_job => "$next_job" });
    }
    if ($p eq '/__mock/stats' && $m eq 'GET') {
        my (%sc, $pub, %uniq, %by);
        $pub = 0;
        %by = map { $_ => 0 } keys %BULK;
        for my $r (@records) {
            $sc{ $r->{status} }++;
            if ($r->{status} == 202
                && $r->{path} =~ m{^/items/bulk/(publish|unpublish|move-to-stage)(?:\?|$)})
            {
                $by{$1} += scalar @{ $r->{ids} };
            }
            if ($r->{status} == 202 && $r->{path} =~ m{^/items/bulk/publish(?:\?|$)}) {
                $pub += scalar @{ $r->{ids} };
                $uniq{$_} = 1 for @{ $r->{ids} };
            }
        }
        return ctl_json($c, $req, 200, {
            requests             => scalar(@records),
            published_ids        => $pub,
            unique_published_ids => scalar(keys %uniq),
            action_ids           => \%by,
            status_counts        => \%sc,
            pending_faults       => scalar(@faults_publish) + scalar(@faults_jobres),
            connections          => scalar(keys %conns),
            jobs                 => scalar(keys %jobs),
        });
    }
    if ($p eq '/__mock/jobs' && $m eq 'GET') {
        # numbered jobs in order, then those of a fault "job_id" by name
        my @k = sort { (($a =~ /^\d{1,15}\z/) ? 0 : 1) <=> (($b =~ /^\d{1,15}\z/) ? 0 : 1)
                       || (($a =~ /^\d{1,15}\z/ && $b =~ /^\d{1,15}\z/) ? $a <=> $b : $a cmp $b) }
                keys %jobs;
        return ctl_json($c, $req, 200, [ map { $jobs{$_} } @k ]);
    }
    return ctl_bad($c, $req, 404, "unknown control endpoint $m $p");
}

# ------------------------------------------------------------------ main --

$listener = open_listener($opt{port})
    or fatal("cannot listen on $opt{host}:$opt{port}: $!");
$bound_port = $listener->sockport;

if (defined $opt{log}) {
    open($log_fh, '>>:raw', $opt{log}) or fatal("cannot open log $opt{log}: $!");
    $log_fh->autoflush(1);
}
if (defined $opt{pidfile}) {
    open(my $pf, '>', $opt{pidfile}) or fatal("cannot write pidfile $opt{pidfile}: $!");
    print {$pf} "$$\n";
    close $pf;
}

$| = 1;
print STDOUT "READY $bound_port\n";

my $last_sweep = now();
while (!$stop) {
    my $t = now();
    last if $t - $start_time >= $opt{lifetime};
    maybe_reopen($t);
    run_scheduled($t);
    if ($t - $last_sweep >= 1) {
        sweep_idle($t);
        $last_sweep = $t;
    }

    my $timeout = 0.5;
    if (@sched) {
        my $d = $sched[0]{due} - $t;
        $timeout = $d if $d < $timeout;
    }
    if (!$listener && $down_until > $t) {
        my $d = $down_until - $t;
        $timeout = $d if $d < $timeout;
    }
    $timeout = 0 if $timeout < 0;

    my $rs = IO::Select->new;
    my $ws = IO::Select->new;
    my %by_fd;
    $rs->add($listener) if $listener;
    for my $c (values %conns) {
        my $fd = fileno($c->{sock});
        $by_fd{$fd} = $c;
        $rs->add($c->{sock}) if want_read($c);
        $ws->add($c->{sock}) if length $c->{wbuf};
    }

    my ($r, $w) = IO::Select->select($rs, $ws, undef, $timeout);
    next unless $r || $w;

    for my $fh (@{ $w // [] }) {
        my $c = $by_fd{ fileno($fh) } or next;
        try_write($c) if alive($c);
    }
    for my $fh (@{ $r // [] }) {
        if ($listener && $fh == $listener) {
            do_accept();
            next;
        }
        my $c = $by_fd{ fileno($fh) // -1 } or next;
        do_read($c) if alive($c);
    }
}

# ---------------------------------------------------------------- cleanup --

for my $c (values %conns) { close_conn($c) }
close($listener) if $listener;
close($log_fh)   if $log_fh;
if (defined $opt{pidfile} && open(my $pf, '<', $opt{pidfile})) {
    my $pid = <$pf>;
    close $pf;
    unlink $opt{pidfile} if defined $pid && $pid =~ /^\s*$$\s*$/;
}
exit 0;
