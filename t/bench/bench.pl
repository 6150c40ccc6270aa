#!/usr/bin/env perl
# ===========================================================================
# Benchmarks of ngx_http_dato_module (issue 7).  Started by t/bench/run.sh
# ("make bench"), which installs wrk and valgrind when missing and raises
# the open files limit.
#
# Every measurement starts the mock DatoCMS API (t/mock/dato_mock.pl) and
# the packaged nginx with the module (DatoTest harness) on free loopback
# ports, runs a bounded load, and compares with a baseline measured in the
# same run.  The machine is shared: repeated measurements report the median.
#
#   1 ingest cost       wrk on a dato_publish location (wait none) vs the
#                       same nginx answering "return 202" with the same body
#   2 instructions      callgrind, single process: Ir per webhook vs Ir per
#                       "return 202" request
#   3 API throughput    mock at 60 calls / 3 s, wrk -c1000 flood of fresh IDs
#                       (wait job): records published per second vs
#                       budget x 200
#   4 calls per record  N distinct records through 2 workers
#   5 event loop        p99 of a static location while the API answers
#                       after 2 s, vs the same with an API answering at once
#   6 memory            RSS per worker with 10,000 webhooks waiting
#   7 lone webhook      job-ID latency of single spaced webhooks (wait job,
#                       default config) minus the mock's round trip for one
#                       bulk publish call bench.pl makes itself
#   8 closed loop       wrk -c64 fresh IDs (wait job, default config):
#                       webhooks/s answered with a job ID vs a
#                       lua-nginx-module batcher (t/bench/lua_batcher.lua,
#                       200 ms window), worker_processes 2 (and 1)
#   9 default floods    as 3, but no dato_* directive (the module's
#                       defaults), mock at 60 and at 30 calls / 3 s
#  10 two instances     two nginx, same token, one mock at 60 / 3 s, both
#                       flooded at once: records/s together, share of 429s
#
# The rows "default config" set no dato_* directive but dato_api_url and
# dato_api_token.  8 needs Debian's libnginx-mod-http-lua (run.sh installs
# it).
#
# Environment:
#   DATO_MODULE            module (default build/ngx_http_dato_module.so)
#   BENCH_QUICK=1          shorter runs (about 3 minutes in all, 8 without)
#   BENCH_ONLY=1,3         run only these measurements
#   BENCH_REPEAT=N         runs per repeated measurement (default 5, quick 1)
#   BENCH_LOOP_PAIRS=N     slow/fast API phase pairs in 5 (default 5, quick 2)
#   BENCH_VERBOSE=1        more progress detail (CPU use, process timings)
#   BENCH_WRK_SECONDS      wrk duration in 1 and 5 (default 5, quick 3)
#   BENCH_FLOOD_SECONDS    duration of each flood in 3, 9, 10 (default 30, quick 12)
#   BENCH_FLOOD_CONNS      connections of the flood in 3, 9 (default 1000; 10: half each)
#   BENCH_CALLGRIND_N      webhooks per callgrind run (default 2000, quick 500)
#   BENCH_RECORDS          N of measurement 4 (default 10000)
#   BENCH_MEM_WEBHOOKS     waiting webhooks in 6 (default 10000)
#   BENCH_LONE_N=N         webhooks and direct calls in 7 (default 20, quick 10)
#   BENCH_LONE_GAP_MS=N    pause after each of them in 7 (default 250)
#   BENCH_CLOSED_CONNS=N   wrk connections in 8 (default 64)
#   BENCH_CLOSED_SECONDS=N duration of each wrk run in 8 (default 8, quick 4)
#   BENCH_CLOSED_PAIRS=N   module/baseline pairs in 8 (default 3, quick 1)
#   BENCH_CLOSED_WP1=0|1   8 also with worker_processes 1 (default 1, quick 0)
#   BENCH_KEEP=1           keep the temporary directories (paths printed)
#   BENCH_PROFILE_DIR      where the callgrind files of measurement 2 are
#                          copied (default /tmp): dato-bench.callgrind.*.out
#
# Prints the results table (markdown) on stdout, progress on stderr; exits
# 1 when a target is missed (FAIL) or a measurement could not run (ERROR).
# ===========================================================================

use strict;
use feature qw(state);
use warnings;

use FindBin ();
use Cwd ();
use lib Cwd::abs_path("$FindBin::Bin/../lib");

BEGIN { $ENV{TEST_NGINX_LEAVE} = 1 if $ENV{BENCH_KEEP} }

use DatoTest;
use Time::HiRes ();
use POSIX qw(ceil floor strftime WNOHANG);
use IO::Socket::INET ();
use IO::Select ();
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Errno qw(EAGAIN EWOULDBLOCK EINTR EINPROGRESS);
use JSON::PP ();

$| = 1;

my $BENCH_DIR = $FindBin::Bin;
my $LUA = "$BENCH_DIR/webhook.lua";

my $QUICK   = $ENV{BENCH_QUICK} ? 1 : 0;
my $REPEAT  = $ENV{BENCH_REPEAT}        // ($QUICK ? 1 : 5);
my $WRK_S   = $ENV{BENCH_WRK_SECONDS}   // ($QUICK ? 3 : 5);
my $FLOOD_S = $ENV{BENCH_FLOOD_SECONDS} // ($QUICK ? 12 : 30);
my $FLOOD_C = $ENV{BENCH_FLOOD_CONNS}   // 1000;
my $CG_N    = $ENV{BENCH_CALLGRIND_N}   // ($QUICK ? 500 : 2000);
my $REC_N   = $ENV{BENCH_RECORDS}       // 10000;
my $MEM_N   = $ENV{BENCH_MEM_WEBHOOKS}  // 10000;
my $PAIRS   = $ENV{BENCH_LOOP_PAIRS}    // ($QUICK ? 2 : 5);
my $LONE_N  = $ENV{BENCH_LONE_N}        // ($QUICK ? 10 : 20);
my $LONE_GAP = $ENV{BENCH_LONE_GAP_MS}  // 250;
my $CLOSED_C = $ENV{BENCH_CLOSED_CONNS} // 64;
my $CLOSED_S = $ENV{BENCH_CLOSED_SECONDS} // ($QUICK ? 4 : 8);
my $CLOSED_PAIRS = $ENV{BENCH_CLOSED_PAIRS} // ($QUICK ? 1 : 3);
my $CLOSED_WP1 = $ENV{BENCH_CLOSED_WP1} // ($QUICK ? 0 : 1);
my %ONLY    = map { $_ => 1 } split /[,\s]+/, ($ENV{BENCH_ONLY} // '1,2,3,4,5,6,7,8,9,10');

my $NOFILE = do { my $n = `sh -c 'ulimit -n'`; chomp $n; $n =~ /^\d+$/ ? $n : 1024 };
$NOFILE = 1_000_000 if $NOFILE eq 'unlimited';

my $T_START = Time::HiRes::time();
my @ROWS;        # result table rows
my @NOTES;       # lines printed after the table
my %CHILD;       # pid => what, processes started here (wrk, valgrind)
my $ID_PREFIX = 1000 + ($$ % 50000);   # fresh decimal IDs, see webhook.lua

$SIG{INT} = $SIG{TERM} = sub { print STDERR "bench: interrupted\n"; exit 130 };
$SIG{PIPE} = 'IGNORE';

END {
    local ($?, $!, $@);
    for my $pid (keys %CHILD) {
        kill 'KILL', $pid;
        waitpid $pid, 0;
    }
}

sub say_progress { printf STDERR "[%5.1fs] %s\n", Time::HiRes::time() - $T_START, "@_" }

sub median {
    my @v = sort { $a <=> $b } grep { defined } @_;
    return undef unless @v;
    return @v % 2 ? $v[$#v / 2] : ($v[@v / 2 - 1] + $v[@v / 2]) / 2;
}

sub fmt {
    my ($v, $d) = @_;
    return 'n/a' unless defined $v;
    $d //= 0;
    my $s = sprintf("%.${d}f", $v);
    1 while $s =~ s/^(-?\d+)(\d{3})/$1,$2/;
    return $s;
}

sub row {
    my (%r) = @_;
    push @ROWS, \%r;
    printf STDERR "  => %s: %s (baseline %s, ratio %s, target %s) %s\n",
        $r{name}, $r{value} // '', $r{baseline} // '-', $r{ratio} // '-',
        $r{target} // '-', $r{result} // '';
}

sub pass { $_[0] ? 'PASS' : 'FAIL' }

sub fresh_prefix { return ++$ID_PREFIX }

###########################################################################
# nginx and mock

# A DatoTest with the mock and nginx running the bench configuration.
#   mock => [mock args], dato => {directive => value}, worker_connections,
#   start => 0: the mock only; workers => N (worker_processes, default 2);
#   defaults => 1: no dato_* directive but the URL and token (the module's
#   defaults; dato => {...} still adds); mock_url => URL: use that running
#   mock (of another DatoTest) instead of starting one
sub env_start {
    my (%o) = @_;
    my $t = DatoTest->new(workers => $o{workers} // 2,
                          exists $o{master} ? (master => $o{master}) : ());
    say_progress("temp dir " . $t->tmpdir) if $ENV{BENCH_KEEP};
    $t->start_mock('--max-conns', 4000, '--lifetime', 900, @{ $o{mock} // [] })
        unless $o{mock_url};
    $t->run(raw => conf($t, %o)) unless defined $o{start} && !$o{start};
    return $t;
}

sub conf {
    my ($t, %o) = @_;
    my $d = $o{dato} // {};
    my %dato = $o{defaults} ? %$d : (
        dato_rate_limit      => '50 3s',
        dato_job_poll        => 'on',
        dato_publish_timeout => '7s',
        dato_api_timeout     => '10s',
        %$d,
    );
    my $workers = $o{workers} // 2;
    my $api_url = $o{mock_url} // '%%MOCK%%';
    my $dato = join '', map { "    $_ $dato{$_};\n" } sort keys %dato;
    my $master = (exists $o{master} && !$o{master}) ? 'off' : 'on';
    my $wconns = $o{worker_connections} // 4096;
    my $rlimit = $NOFILE > 1024 ? "worker_rlimit_nofile $NOFILE;" : '';
    my $tmp = $t->tmpdir;
    my $pidfile = $o{pidfile} // "$tmp/nginx.pid";
    my $elog = $o{error_log} // "$tmp/error.log";
    my $answer = q('{"data":[],"meta":{"records":1,"status":"queued"}}\n');

    return <<"EOF";
load_module $t->{module};
daemon off;
master_process $master;
worker_processes $workers;
$rlimit
pid $pidfile;
error_log $elog notice;

events {
    worker_connections $wconns;
}

http {
    access_log off;
    client_body_temp_path $tmp/body;
    proxy_temp_path $tmp/proxy;
    fastcgi_temp_path $tmp/fastcgi;
    uwsgi_temp_path $tmp/uwsgi;
    scgi_temp_path $tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;

    # holds requests (1 per minute, the rest wait): nginx's own cost of a
    # waiting request, the baseline of the memory measurement
    limit_req_zone \$server_port zone=hold:1m rate=1r/m;

    dato_api_url $api_url;
    dato_api_token test-token;
$dato
    server {
        listen 127.0.0.1:%%PORT%% backlog=8192;

        # the module, answering as soon as the records are queued
        location = /hook {
            dato_publish;
            dato_publish_wait none;
        }

        # the module, answering with the job ID
        location = /hook-job {
            dato_publish;
            dato_publish_wait job;
        }

        # the baseline: the same bytes, without the module
        location = /return {
            default_type application/json;
            return 202 $answer;
        }

        location = /held {
            limit_req zone=hold burst=100000;
            empty_gif;    # a content handler: "return" runs before limit_req
        }

        location = /static {
            return 200 "ok";
        }

        location = /status {
            dato_publish_status;
        }

        location = /nginx_status {
            stub_status;
        }
    }
}
EOF
}

sub workers_of {
    my ($t) = @_;
    return sort { $a <=> $b } DatoTest::children($t->pid);
}

sub rss_kb {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return undef;
    while (my $l = <$fh>) { return $1 if $l =~ /^VmRSS:\s+(\d+)\s+kB/ }
    return undef;
}

sub metric {
    my ($t, $name) = @_;
    my $r = $t->request(path => '/status?format=prometheus', timeout => 5);
    return undef unless ($r->{status} // 0) == 200;
    return $1 if $r->{body} =~ /^\Q$name\E(?:\{[^}]*\})?\s+(\S+)/m;
    return undef;
}

# the mock's log: one hash per API request {t, path, status, ids => [..]}
# (regexes: JSON::PP is too slow for thousands of 8 KB bodies)
sub mock_log {
    my ($t) = @_;
    my @recs;
    open my $fh, '<', $t->tmpdir . '/mock.log' or return ();
    while (my $l = <$fh>) {
        my %r;
        ($r{status}, $r{t}) = $l =~ /"status":(\d+),"t":([\d.eE+-]+)\}\s*$/ or next;
        ($r{path}) = $l =~ /"path":"([^"]*)"/;
        my ($ids) = $l =~ /"ids":\[(.*?)\],"job"/;
        $r{ids} = [ defined $ids ? ($ids =~ /"([^"]+)"/g) : () ];
        push @recs, \%r;
    }
    return @recs;
}

sub env_stop {
    my ($t, %o) = @_;
    return unless $t;
    if ($o{fast}) { $t->stop_fast } else { $t->stop(timeout => $o{timeout} // 20) }
    $t->stop_mock;
    my @bad = $t->bad_log_lines;
    if (@bad) {
        push @NOTES, "error.log of a run had alerts: " . join(' | ', @bad[0 .. ($#bad < 2 ? $#bad : 2)]);
    }
}

###########################################################################
# processes: wrk, valgrind

sub spawn {
    my ($argv, $out, %o) = @_;
    my $pid = fork;
    die "fork: $!\n" unless defined $pid;
    if ($pid == 0) {
        $ENV{$_} = $o{env}{$_} for keys %{ $o{env} // {} };
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $out or POSIX::_exit(127);
        open STDERR, '>&', \*STDOUT;
        { exec { $argv->[0] } @$argv; }
        POSIX::_exit(127);
    }
    $CHILD{$pid} = $argv->[0];
    return $pid;
}

# waits for $pid at most $timeout s, then kills it; returns the wait status
sub reap {
    my ($pid, $timeout, $sig) = @_;
    my $deadline = Time::HiRes::time() + $timeout;
    while (Time::HiRes::time() < $deadline) {
        my $r = waitpid($pid, WNOHANG);
        if ($r == $pid || $r < 0) { delete $CHILD{$pid}; return $? }
        Time::HiRes::sleep(0.05);
    }
    kill $sig // 'TERM', $pid;
    for (1 .. 60) {
        my $r = waitpid($pid, WNOHANG);
        if ($r == $pid || $r < 0) { delete $CHILD{$pid}; return -1 }
        Time::HiRes::sleep(0.05);
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
    delete $CHILD{$pid};
    return -1;
}

sub reap_nohang {
    my ($pid) = @_;
    my $r = waitpid($pid, WNOHANG);
    return undef if $r == 0;
    delete $CHILD{$pid};
    return $r == $pid ? $? : 0;
}

sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    return <$fh> // '';
}

# wrk in the background: returns a handle for wrk_wait
sub wrk_start {
    my (%a) = @_;
    my $tmp = $a{t}->tmpdir;
    my $out = "$tmp/wrk." . (++$a{t}{bench_wrk}) . '.out';
    my @argv = ('wrk', '-t' . ($a{threads} // 2), '-c' . ($a{conns} // 50),
                '-d' . $a{seconds} . 's', '--latency',
                '--timeout', ($a{timeout} // 10) . 's');
    push @argv, '-s', $a{script} // $LUA if $a{lua} || $a{script};
    push @argv, 'http://127.0.0.1:' . $a{t}->port . $a{path};
    push @argv, '--', @{ $a{lua} } if $a{lua};
    my $pid = spawn(\@argv, $out, env => $a{env});
    return { pid => $pid, out => $out, seconds => $a{seconds}, t0 => Time::HiRes::time() };
}

sub wrk_wait {
    my ($h) = @_;
    reap($h->{pid}, $h->{seconds} + 20, 'INT');
    $h->{t1} = Time::HiRes::time();
    return { %{ parse_wrk(slurp($h->{out})) }, t0 => $h->{t0}, t1 => $h->{t1} };
}

sub wrk_run { return wrk_wait(wrk_start(@_)) }

sub to_ms {
    my ($v, $u) = @_;
    return $v / 1000 if $u eq 'us';
    return $v if $u eq 'ms';
    return $v * 1000 if $u eq 's';
    return $v * 60000 if $u eq 'm';
    return undef;
}

sub parse_wrk {
    my ($s) = @_;
    my %r = (raw => $s);
    $r{rps} = $1 if $s =~ /Requests\/sec:\s+([\d.]+)/;
    $r{requests} = $1 if $s =~ /(\d+) requests in/;
    $r{p50} = to_ms($1, $2) if $s =~ /^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$/m;
    $r{p99} = to_ms($1, $2) if $s =~ /^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$/m;
    $r{max} = to_ms($1, $2) if $s =~ /^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)\s/m;
    $r{non2xx} = $s =~ /Non-2xx or 3xx responses:\s+(\d+)/ ? $1 : 0;
    $r{errors} = 0;
    if ($s =~ /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/) {
        $r{errors} = $1 + $2 + $3 + $4;
        $r{timeouts} = $4;
        $r{connect_errors} = $1;
    }
    return \%r;
}

###########################################################################
# a small HTTP/1.1 keep-alive client, for exact request counts

# Sends $n requests made by $make->($i) (raw request bytes) over $conns
# keep-alive connections, each waiting for its answer before the next.
# Returns { status => {code => count}, seconds => s, errors => n }.
sub http_load {
    my (%a) = @_;
    my ($port, $n, $make) = @a{qw(port n make)};
    my $conns = $a{conns} // 1;
    my $deadline = Time::HiRes::time() + ($a{timeout} // 120);
    my %status;
    my $errors = 0;
    my $next = 0;
    my $done = 0;
    my @c;

    my $open = sub {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                      Proto => 'tcp', Timeout => 5) or return undef;
        setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
        $s->blocking(0);
        return { s => $s, in => '', out => '', busy => 0 };
    };
    for (1 .. ($conns < $n ? $conns : $n)) {
        my $c = $open->() or do { $errors++; next };
        push @c, $c;
    }
    die "http_load: cannot connect to 127.0.0.1:$port\n" unless @c;

    my $t0 = Time::HiRes::time();
    my $feed = sub {
        my ($c) = @_;
        return if $c->{busy} || $next >= $n;
        $c->{out} = $make->($next++);
        $c->{busy} = 1;
    };
    $feed->($_) for @c;

    while ($done < $n && Time::HiRes::time() < $deadline) {
        my @live = grep { $_->{s} } @c;
        last unless @live;
        my %by = map { fileno($_->{s}) => $_ } @live;
        my $rs = IO::Select->new(map { $_->{s} } grep { $_->{busy} } @live);
        my $ws = IO::Select->new(map { $_->{s} } grep { length $_->{out} } @live);
        my ($r, $w) = IO::Select->select($rs, $ws, undef, 1);
        for my $fh (@{ $w || [] }) {
            my $c = $by{ fileno $fh };
            my $k = syswrite($fh, $c->{out});
            if (defined $k) { substr($c->{out}, 0, $k, '') }
            elsif ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) {
                $errors++; close $fh; $c->{s} = undef;
            }
        }
        for my $fh (@{ $r || [] }) {
            my $c = $by{ fileno $fh };
            next unless $c->{s};
            my $k = sysread($fh, my $buf, 65536);
            if (!$k) {
                next if !defined $k && ($! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR);
                # closed: count the request as failed, reconnect
                $errors++; $done++ if $c->{busy};
                close $fh;
                my $nc = $open->();
                %$c = $nc ? %$nc : (s => undef);
                $feed->($c) if $c->{s};
                next;
            }
            $c->{in} .= $buf;
            while (1) {
                my $h = index($c->{in}, "\r\n\r\n");
                last if $h < 0;
                my $head = substr($c->{in}, 0, $h);
                my ($code) = $head =~ m{^HTTP/1\.\d (\d{3})};
                my ($len) = $head =~ /^Content-Length:\s*(\d+)/mi;
                $len //= 0;
                last if length($c->{in}) < $h + 4 + $len;
                substr($c->{in}, 0, $h + 4 + $len, '');
                $status{ $code // 0 }++;
                $done++;
                $c->{busy} = 0;
                $feed->($c);
            }
        }
    }
    my $secs = Time::HiRes::time() - $t0;
    close $_->{s} for grep { $_->{s} } @c;
    $errors += $n - $done;
    return { status => \%status, seconds => $secs, errors => $errors, done => $done };
}

sub post_req {
    my ($port, $path, $body, $close) = @_;
    return "POST $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\n"
         . "Content-Type: application/json\r\nContent-Length: " . length($body) . "\r\n"
         . ($close ? "Connection: close\r\n" : '')
         . "\r\n" . $body;
}

# the DatoCMS webhook body of webhook.lua, for the Perl clients
my $TEMPLATE;
sub webhook_body {
    my ($id) = @_;
    unless (defined $TEMPLATE) {
        my ($block) = slurp($LUA) =~ /local template = (.*?)\n\n/s
            or die "no template in $LUA\n";
        $TEMPLATE = '';
        $TEMPLATE .= $1 while $block =~ /'([^']*)'/g;
    }
    # each body a call of its own, as DatoCMS's (webhook.lua does so too)
    state $call = 0;
    $call++;
    my $cid = sprintf('%d%06d', $$, $call);
    return $TEMPLATE =~ s/%s/$id/r =~ s/%s/$cid/r;
}

sub fresh_id { my ($prefix, $i) = @_; return sprintf('%d', $prefix * 1_000_000_000 + $i + 1) }

###########################################################################
# 1. ingest cost

sub bench_ingest {
    say_progress("1. ingest cost: wrk -t2 -c50 -d${WRK_S}s, $REPEAT x (return 202, dato_publish)");
    my $t = env_start(mock => [ '--limit', 60, '--window', 3 ]);

    # warm-up: both locations, the module's first calls
    wrk_run(t => $t, path => '/return', lua => [ 'pool', 1 ], seconds => 1, conns => 50);
    wrk_run(t => $t, path => '/hook', lua => [ 'pool', 1 ], seconds => 1, conns => 50);

    my (@base, @mod);
    for my $i (1 .. $REPEAT) {
        for my $which ($i % 2 ? ('return', 'hook') : ('hook', 'return')) {
            my $r = wrk_run(t => $t, path => "/$which", lua => [ 'pool', $i ],
                            seconds => $WRK_S, conns => 50, threads => 2);
            die "wrk failed:\n$r->{raw}\n" unless $r->{rps};
            say_progress(sprintf "   %-6s %9.0f req/s  p50 %.2f ms  p99 %.2f ms  non-2xx %d errors %d",
                         $which, $r->{rps}, $r->{p50} // -1, $r->{p99} // -1, $r->{non2xx}, $r->{errors});
            push @{ $which eq 'hook' ? \@mod : \@base }, $r;
        }
    }
    my $st = $t->mock_stats;
    env_stop($t);

    my $b_rps = median(map { $_->{rps} } @base);
    my $m_rps = median(map { $_->{rps} } @mod);
    my $b_p99 = median(map { $_->{p99} } @base);
    my $m_p99 = median(map { $_->{p99} } @mod);
    my $bad = 0;
    $bad += $_->{non2xx} + $_->{errors} for @mod;

    # the ratios of the runs made back to back, whose load on the shared
    # machine is alike: their median drifts less than a ratio of medians
    my @r_rps = map { $mod[$_]{rps} / $base[$_]{rps} } 0 .. $#mod;
    my @r_p99 = map { $mod[$_]{p99} / $base[$_]{p99} } 0 .. $#mod;
    my $r1 = median(@r_rps);
    row(n => 1, name => 'Ingest: requests/s, dato_publish (wait none) vs return 202',
        value => fmt($m_rps) . ' req/s', baseline => fmt($b_rps) . ' req/s',
        ratio => sprintf('%.2f', $r1), target => '>= 0.80', result => pass($r1 >= 0.8 && !$bad));
    my $r2 = median(@r_p99);
    row(n => 1, name => 'Ingest: p99 latency, dato_publish vs return 202',
        value => fmt($m_p99, 2) . ' ms', baseline => fmt($b_p99, 2) . ' ms',
        ratio => sprintf('%.2f', $r2), target => '<= 2.00', result => pass($r2 <= 2));
    push @NOTES, sprintf('1: %d pairs of wrk runs (-t2 -c50 -d%ds, pool of 100 IDs), the two of a '
        . 'pair back to back in alternating order; values are medians, ratios the median of the '
        . 'pairs\' ratios (req/s: %s); module answers not 2xx or socket errors: %d; mock saw %d API '
        . 'calls, %d answered 429.',
        $REPEAT, $WRK_S, join(' ', map { sprintf '%.2f', $_ } @r_rps), $bad, $st->{requests},
        $st->{status_counts}{429} // 0);
}

###########################################################################
# 2. instructions per webhook (callgrind)

sub callgrind_run {
    my ($t, $tag, $path, $n) = @_;
    my $tmp = $t->tmpdir;
    my $conf = $t->write_file("cg-$tag.conf", $t->subst(conf($t, master => 0,
        pidfile => "$tmp/cg-$tag.pid", error_log => "$tmp/cg-$tag.error.log")));
    my $out = "$tmp/callgrind.$tag.out";
    my $pid = spawn([ 'valgrind', '--tool=callgrind', "--callgrind-out-file=$out",
                      '--dump-instr=no', '--collect-jumps=no',
                      '/usr/sbin/nginx', '-p', "$tmp/", '-c', $conf,
                      '-e', "$tmp/cg-$tag.error.log" ],
                    "$tmp/callgrind.$tag.log");
    # up?
    my $t_spawn = Time::HiRes::time();
    my $deadline = Time::HiRes::time() + 90;
    my $up = 0;
    while (Time::HiRes::time() < $deadline) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port,
                                      Proto => 'tcp', Timeout => 1);
        if ($s) { close $s; $up = 1; last }
        last if waitpid($pid, WNOHANG) == $pid;
        Time::HiRes::sleep(0.1);
    }
    die "nginx under callgrind did not come up:\n" . slurp("$tmp/callgrind.$tag.log") unless $up;
    my $t_up = Time::HiRes::time();

    my $res;
    if ($n) {
        my $body = webhook_body('X9_l7IdvRq26r7e2wn353Q');
        my $req = post_req($t->port, $path, $body);
        $res = http_load(port => $t->port, n => $n, conns => 1, make => sub { $req },
                         timeout => 300);
    }
    # the up-check connection and the client are gone; a graceful exit
    # sends what the module still holds
    my $t_load = Time::HiRes::time();
    kill 'QUIT', $pid;
    # Under valgrind a signal does not always wake an epoll_wait() without
    # timeout (a process with no timer left, as after the "return" run):
    # a connection wakes it, and nginx sees the quit flag.
    my $st;
    for (1 .. 60) {
        last if defined($st = reap_nohang($pid));
        Time::HiRes::sleep(0.5);
        last if defined($st = reap_nohang($pid));
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port,
                                      Proto => 'tcp', Timeout => 1);
        close $s if $s;
        Time::HiRes::sleep(0.5);
    }
    $st //= reap($pid, 0, 'TERM');
    my $t_end = Time::HiRes::time();
    push @NOTES, sprintf('2: run "%s" did not exit within 60 s of SIGQUIT; stopped with SIGTERM.', $tag)
        if $st == -1;
    say_progress(sprintf "   callgrind %-8s up %.1f s, requests %.1f s, exit %.1f s%s", $tag,
                 $t_up - $t_spawn, $t_load - $t_up, $t_end - $t_load, $st == -1 ? ' (SIGTERM)' : '')
        if $ENV{BENCH_VERBOSE};
    my $cg = slurp($out);
    my ($total) = $cg =~ /^(?:summary|totals):\s+(\d+)/m;
    die "no callgrind totals in $out\n" . slurp("$tmp/callgrind.$tag.log") unless $total;
    return { ir => $total, out => $out, res => $res };
}

sub bench_callgrind {
    say_progress("2. instructions per request: callgrind, $CG_N webhooks, single process");
    my $t = env_start(mock => [ '--limit', 60, '--window', 3 ], start => 0);
    my (@idle, @mod, @ret);
    my $reps = $QUICK ? 1 : 2;
    my ($last_mod, $last_idle);
    for my $i (1 .. $reps) {
        $last_idle = callgrind_run($t, "idle$i", '/hook', 0);
        push @idle, $last_idle->{ir};
        my $m = callgrind_run($t, "hook$i", '/hook', $CG_N);
        my $r = callgrind_run($t, "return$i", '/return', $CG_N);
        for ([ hook => $m ], [ return => $r ]) {
            my $ok = $_->[1]{res}{status}{202} // 0;
            die "callgrind $_->[0]: only $ok of $CG_N answered 202\n" if $ok != $CG_N;
        }
        push @mod, $m->{ir};
        push @ret, $r->{ir};
        $last_mod = $m;
        say_progress(sprintf "   run %d: idle %s Ir, dato_publish %s Ir, return %s Ir",
                     $i, fmt($idle[-1]), fmt($m->{ir}), fmt($r->{ir}));
    }
    my $idle = median(@idle);
    my $per_mod = (median(@mod) - $idle) / $CG_N;
    my $per_ret = (median(@ret) - $idle) / $CG_N;
    my $ratio = $per_mod / $per_ret;
    row(n => 2, name => 'Instructions per request (callgrind Ir), dato_publish vs return 202',
        value => fmt($per_mod) . ' Ir', baseline => fmt($per_ret) . ' Ir',
        ratio => sprintf('%.2f', $ratio), target => '< 2.00', result => pass($ratio < 2));
    push @NOTES, sprintf('2: (total Ir - Ir of an idle run) / %d, same webhook (one ID) each time over '
        . 'one keep-alive connection, nginx under valgrind --tool=callgrind with master_process off; '
        . 'the module run includes its API calls (batch window, job polls); median of %d.',
        $CG_N, $reps);

    my $dir = $ENV{BENCH_PROFILE_DIR} // '/tmp';
    my %kept;
    for ([ hook => $last_mod->{out} ], [ idle => $last_idle->{out} ],
         [ return => $t->tmpdir . "/callgrind.return$reps.out" ]) {
        my $to = "$dir/dato-bench.callgrind.$_->[0].out";
        $kept{ $_->[0] } = $to if system('cp', $_->[1], $to) == 0;
    }
    profile_notes($last_mod->{out}, $last_idle->{out}, $CG_N);
    push @NOTES, '2: callgrind files kept: ' . join(', ', map { $kept{$_} } sort keys %kept)
        . ' (callgrind_annotate FILE)' if %kept;
    env_stop($t);
}

# callgrind_annotate's function list of a run: { function => Ir }
sub annotate {
    my ($out, $incl) = @_;
    my %f;
    my $txt = `callgrind_annotate --inclusive=@{[ $incl ? 'yes' : 'no' ]} --threshold=100 $out 2>/dev/null`;
    for my $l (split /\n/, $txt) {
        next unless $l =~ /^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*(?:\[([^\]]*)\])?\s*$/;
        my ($ir, $fn, $obj) = ($1, $2, $3);
        $ir =~ tr/,//d;
        next if $fn =~ /PROGRAM TOTALS/;
        $fn =~ s/^.*:(?=[^:]+$)//;          # file:function -> function
        $fn =~ s/'\d+$//;                    # recursion levels
        if ($fn =~ /^0x0*([0-9a-f]+)$/ && $obj) {
            my $addr = $1;
            my $o = $obj =~ s{.*/}{}r;
            $o =~ s/\.so\..*/.so/;
            $fn = "0x$addr ($o)";
        }
        # the same function under two file names (inlined headers): keep the larger
        $f{$fn} = $ir if !defined $f{$fn} || $ir > $f{$fn};
    }
    return \%f;
}

# the profile of the module run minus the idle run, per webhook
sub profile_notes {
    my ($out, $idle_out, $n) = @_;
    my @lines;
    for my $incl (0, 1) {
        my $m = annotate($out, $incl);
        my $i = annotate($idle_out, $incl);
        my @f = map { [ ($m->{$_} - ($i->{$_} // 0)) / $n, $_ ] } keys %$m;
        @f = sort { $b->[0] <=> $a->[0] } grep { $_->[0] >= 1 } @f;
        if ($incl) {
            @f = grep { $_->[1] =~ /dato|json|curl|ngx_http_process_request|ngx_http_read_client_request_body|ngx_http_finalize_request|ngx_http_send_header|ngx_http_output_filter|ngx_event_expire_timers|^malloc$|^free$/ } @f;
            @f = @f[0 .. 29] if @f > 30;
            push @lines, 'inclusive Ir per webhook (module run minus idle run, / N):';
        } else {
            @f = @f[0 .. 24] if @f > 25;
            push @lines, 'self Ir per webhook, top 25 functions (module run minus idle run, / N):';
        }
        push @lines, map { sprintf '    %10s  %s', fmt($_->[0]), $_->[1] } @f;
    }
    push @NOTES, "2: profile of the module run:\n" . join("\n", @lines);
}

###########################################################################
# 3. throughput to the API with its real limit

sub bench_flood {
    my (%o) = @_;
    my ($calls, $period, $poll) = @o{qw(calls period poll)};
    my $ceiling = $calls / $period * 200;
    say_progress(sprintf "3. flood: dato_rate_limit %d %ds, dato_job_poll %s, wrk -c%d %ds, fresh IDs, wait job",
                 $calls, $period, $poll, $FLOOD_C, $FLOOD_S);
    my $t = env_start(mock => [ '--limit', 60, '--window', 3 ],
                      worker_connections => ($FLOOD_C + 1024 > 4096 ? $FLOOD_C + 1024 : 4096),
                      dato => { dato_rate_limit => "$calls ${period}s",
                                dato_job_poll => $poll });
    my $prefix = fresh_prefix();
    my $w = wrk_run(t => $t, path => '/hook-job', lua => [ 'fresh', $prefix ],
                    seconds => $FLOOD_S, conns => $FLOOD_C, threads => 2, timeout => 10);
    die "wrk failed:\n$w->{raw}\n" unless defined $w->{rps};
    Time::HiRes::sleep(1);
    my $st = $t->mock_stats;
    my @log = mock_log($t);
    env_stop($t, fast => 1);

    # records published per second in the steady state: from 3 s after
    # the start of the flood to its end
    my $warm = 3;
    my ($from, $to) = ($w->{t0} + $warm, $w->{t0} + $FLOOD_S);
    my %ids;
    my ($pub_calls, $poll_calls, $r429, $all_pub) = (0, 0, 0, 0);
    for my $r (@log) {
        $r429++ if $r->{status} == 429;
        next unless $r->{t} >= $from && $r->{t} < $to;
        if ($r->{path} =~ m{^/items/bulk/publish}) {
            $pub_calls++;
            next unless $r->{status} == 202;
            $ids{$_} = 1 for @{ $r->{ids} };
        } elsif ($r->{path} =~ m{^/job-results/}) {
            $poll_calls++;
        }
    }
    my $span = $to - $from;
    my $rate = keys(%ids) / $span;
    my $fill = $pub_calls ? keys(%ids) / $pub_calls : 0;
    my $target = 0.95 * $ceiling;
    my $name = sprintf 'API throughput: records/s published, dato_rate_limit %d %ds, dato_job_poll %s',
                       $calls, $period, $poll;
    row(n => 3, name => $name,
        value => fmt($rate) . '/s', baseline => fmt($ceiling) . '/s (budget x 200)',
        ratio => sprintf('%.3f', $rate / $ceiling),
        target => $poll eq 'on' ? 'info (polls share the budget)' : '>= ' . fmt($target) . '/s (0.95)',
        result => $poll eq 'on' ? 'INFO' : pass($rate >= $target));
    row(n => 3, name => "API throughput: 429s at the mock, rate limit $calls ${period}s, polls $poll",
        value => $st->{status_counts}{429} // 0, baseline => '-', ratio => '-', target => '0',
        result => pass(($st->{status_counts}{429} // 0) == 0));
    push @NOTES, sprintf('3 (%d %ds, polls %s): %.1f s window; %d publish calls (%.1f records each, %.2f calls/s), '
        . '%d job polls; webhooks answered %s/s by nginx (wrk), p50 %s ms, p99 %s ms, non-2xx %d, '
        . 'socket errors %d; mock total: %d requests, statuses %s.',
        $calls, $period, $poll, $span, $pub_calls, $fill, $pub_calls / $span, $poll_calls,
        fmt($w->{rps}), fmt($w->{p50}), fmt($w->{p99}), $w->{non2xx}, $w->{errors}, $st->{requests},
        join(',', map { "$_:$st->{status_counts}{$_}" } sort keys %{ $st->{status_counts} }));
}

###########################################################################
# 4. calls per record

sub bench_calls {
    say_progress("4. calls per record: $REC_N distinct records, 2 workers, $REPEAT x");
    my $t = env_start(mock => [ '--limit', 60, '--window', 3 ],
                      dato => { dato_job_poll => 'off' });
    my @calls;
    my $ok = 1;
    my $limit = ceil($REC_N / 200) + 2;
    for my $i (1 .. $REPEAT) {
        $t->mock_reset;
        my $prefix = fresh_prefix();
        my $port = $t->port;
        my $res = http_load(port => $port, n => $REC_N, conns => 32, timeout => 120,
            make => sub { post_req($port, '/hook', webhook_body(fresh_id($prefix, $_[0]))) });
        my $accepted = $res->{status}{202} // 0;
        # all sent?
        $t->wait_for(sub { ($t->mock_stats->{unique_published_ids} // 0) >= $accepted
                           && (metric($t, 'dato_records_queued') // 1) == 0 }, 30, 0.2);
        my $st = $t->mock_stats;
        my $n = $st->{requests};
        push @calls, $n;
        $ok &&= $accepted == $REC_N && $st->{unique_published_ids} == $REC_N && $n <= $limit;
        say_progress(sprintf "   run %d: %d webhooks answered 202 in %.1f s, %d API calls, %d distinct IDs published",
                     $i, $accepted, $res->{seconds}, $n, $st->{unique_published_ids});
    }
    env_stop($t);
    my $worst = (sort { $b <=> $a } @calls)[0];
    row(n => 4, name => "Calls per record: bulk calls for $REC_N distinct records (worst of $REPEAT)",
        value => $worst, baseline => "ceil(N/200) = " . ceil($REC_N / 200),
        ratio => sprintf('%.3f', $worst / ceil($REC_N / 200)),
        target => "<= $limit", result => pass($ok));
    push @NOTES, sprintf('4: %d webhooks of one fresh ID each over 32 keep-alive connections, wait none, '
        . 'dato_job_poll off; calls per run: %s.', $REC_N, join(', ', @calls));
}

###########################################################################
# 5. the event loop never blocks

sub bench_loop {
    say_progress("5. event loop: static p99 with the API answering after 2 s vs at once, $PAIRS x");
    my $t = env_start(mock => [ '--limit', 60, '--window', 3 ]);
    my (%p99, %rps, %flow, %max);
    my $flow_s = $WRK_S + 3;

    # warm-up
    wrk_run(t => $t, path => '/static', seconds => 1, conns => 20, threads => 1);

    for my $i (1 .. $PAIRS) {
        for my $phase ($i % 2 ? ('fast', 'slow') : ('slow', 'fast')) {
            $t->mock_reset;
            if ($phase eq 'slow') {
                $t->mock_faults([ ({ delay_ms => 2000 }) x 400 ]);
                $t->mock_faults([ ({ delay_ms => 2000, on => 'job-results' }) x 400 ]);
            }
            # webhooks flowing: 4 connections, one every 20 ms each
            my $flow = wrk_start(t => $t, path => '/hook', lua => [ 'fresh', fresh_prefix() ],
                                 seconds => $flow_s, conns => 4, threads => 1,
                                 env => { BENCH_DELAY_MS => 20 });
            Time::HiRes::sleep(2);
            my @pids = (workers_of($t), $t->{mock_pid});
            my $cpu0 = cpu_ticks(@pids);
            my $r = wrk_run(t => $t, path => '/static', seconds => $WRK_S, conns => 20, threads => 1,
                            script => "$BENCH_DIR/paced.lua", env => { BENCH_DELAY_MS => 10 });
            my $cpu1 = cpu_ticks(@pids);
            my $f = wrk_wait($flow);
            my $st = $t->mock_stats;
            my $delayed = $phase eq 'slow' ? 800 - $st->{pending_faults} : 0;
            say_progress(sprintf "   %-4s API: static %6.0f req/s p50 %.2f ms p99 %.2f ms max %.1f ms; webhooks %.0f/s (non-2xx %d); API calls %d, %d delayed 2 s",
                         $phase, $r->{rps}, $r->{p50}, $r->{p99}, $r->{max} // -1, $f->{rps}, $f->{non2xx}, $st->{requests}, $delayed);
            say_progress("        CPU % during the static run: " . join(', ', map {
                             sprintf '%s %.0f', $_ eq $t->{mock_pid} ? 'mock' : "worker $_",
                                 100 * ($cpu1->{$_} - $cpu0->{$_}) / 100 / ($r->{t1} - $r->{t0}) } @pids)
                         . sprintf(', machine busy %.0f', 100 * (1 - ($cpu1->{idle} - $cpu0->{idle})
                                   / (($cpu1->{all} - $cpu0->{all}) || 1))))
                if $ENV{BENCH_VERBOSE};
            push @{ $p99{$phase} }, $r->{p99};
            push @{ $rps{$phase} }, $r->{rps};
            push @{ $max{$phase} }, $r->{max};
            push @{ $flow{$phase} }, $f;
        }
    }
    $t->mock_reset;
    env_stop($t);
    my $slow = median(@{ $p99{slow} });
    my $fast = median(@{ $p99{fast} });
    my $ratio = $slow / $fast;
    my @pair = map { $p99{slow}[$_] / $p99{fast}[$_] } 0 .. $PAIRS - 1;
    my ($max_slow) = sort { $b <=> $a } @{ $max{slow} };
    my ($max_fast) = sort { $b <=> $a } @{ $max{fast} };
    row(n => 5, name => 'Event loop: p99 of a static location, API answering after 2 s vs at once',
        value => fmt($slow, 2) . ' ms', baseline => fmt($fast, 2) . ' ms',
        ratio => sprintf('%.2f', $ratio), target => '<= 1.50', result => pass($ratio <= 1.5));
    push @NOTES, sprintf('5: wrk -t1 -c20 -d%ds on "return 200", paced at 10 ms per connection (~2,000 req/s), while ~200 webhooks/s (fresh IDs, wait none, '
        . 'wrk -c4 with 20 ms delay) flow into the same nginx; API delayed by mock faults '
        . '{"delay_ms":2000} on every publish and job poll; medians of %d alternating phase pairs; '
        . 'p99 slow/fast per pair: %s; static req/s median %s (slow API) vs %s; '
        . 'highest latency of any static request: %.1f ms (slow API) vs %.1f ms.',
        $WRK_S, $PAIRS, join(', ', map { sprintf '%.2f', $_ } @pair),
        fmt(median(@{ $rps{slow} })), fmt(median(@{ $rps{fast} })), $max_slow // -1, $max_fast // -1);
}

###########################################################################
# 6. memory

# opens $n connections and sends one request on each; returns the sockets
sub hold_requests {
    my ($port, $n, $make) = @_;
    my @s;
    my $addr = Socket::pack_sockaddr_in($port, Socket::inet_aton('127.0.0.1'));
    for my $i (0 .. $n - 1) {
        my $s;
        unless (socket($s, Socket::PF_INET(), Socket::SOCK_STREAM(), 0) && connect($s, $addr)) {
            say_progress("   connect $i: $!");
            last;
        }
        my $req = $make->($i);
        my $k = syswrite($s, $req);
        unless (defined $k && $k == length $req) { say_progress("   write $i failed"); close $s; last }
        push @s, $s;
    }
    return @s;
}

sub rss_all {
    my ($t) = @_;
    return { map { $_ => rss_kb($_) } workers_of($t) };
}

sub rss_delta {
    my ($before, $after) = @_;
    my %d = map { $_ => ($after->{$_} // 0) - ($before->{$_} // 0) } keys %$after;
    return \%d;
}

# utime + stime of each pid, and the machine's idle/all jiffies
sub cpu_ticks {
    my (@pids) = @_;
    my %t;
    for my $p (@pids) {
        my $s = slurp("/proc/$p/stat");
        my @f = split ' ', substr($s, rindex($s, ')') + 2);
        $t{$p} = ($f[11] // 0) + ($f[12] // 0);
    }
    my ($cpu) = slurp('/proc/stat') =~ /^cpu\s+(.*)$/m;
    my @c = split ' ', $cpu // '';
    $t{idle} = ($c[3] // 0) + ($c[4] // 0);
    $t{all} = sum(@c);
    return \%t;
}

sub sum { my $s = 0; $s += $_ for @_; $s }

sub bench_memory {
    my $n = $MEM_N;
    say_progress("6. memory: $n webhooks waiting (wait job, API answering after 60 s)");
    my $wc = $n + 2048;
    my $base_conf = { dato_publish_timeout => '120s', dato_api_timeout => '100s',
                      dato_job_poll => 'off' };
    my %res;

    for my $case (qw(held waiting queued)) {
        # "queued": the rate limit holds the batches in the queue (one call
        # out), so that the records are not in curl's hands
        my $t = env_start(mock => [ '--limit', 60, '--window', 3 ],
                          worker_connections => $wc,
                          dato => { %$base_conf,
                                    $case eq 'queued' ? (dato_rate_limit => '1 60s') : () });
        $t->mock_faults([ ({ delay_ms => 60000 }) x 200 ]);
        Time::HiRes::sleep(1);
        my $idle = rss_all($t);
        my $port = $t->port;
        my @socks;
        my $records;
        if ($case eq 'held') {
            # nginx alone: the same webhooks held by limit_req (delayed)
            my $prefix = fresh_prefix();
            @socks = hold_requests($port, $n, sub {
                post_req($port, '/held', webhook_body(fresh_id($prefix, $_[0]))) });
        } elsif ($case eq 'waiting') {
            my $prefix = fresh_prefix();
            @socks = hold_requests($port, $n, sub {
                post_req($port, '/hook-job', webhook_body(fresh_id($prefix, $_[0]))) });
            $t->wait_for(sub { (metric($t, 'dato_records_queued') // 0) >= @socks }, 30, 0.3);
            $records = metric($t, 'dato_records_queued');
        } else {
            # the queue alone: 50 webhooks of 200 IDs, wait none
            my $prefix = fresh_prefix();
            my $k = int($n / 200) || 1;
            my $res = http_load(port => $port, n => $k, conns => 4, timeout => 60, make => sub {
                my $w = $_[0];
                my $body = '{"ids":[' . join(',', map { '"' . fresh_id($prefix, $w * 200 + $_) . '"' } 0 .. 199) . ']}';
                post_req($port, '/hook', $body) });
            $t->wait_for(sub { (metric($t, 'dato_records_queued') // 0) >= $k * 200 }, 30, 0.3);
            $records = metric($t, 'dato_records_queued');
        }
        Time::HiRes::sleep(1);
        my $after = rss_all($t);
        my $ss = $t->request(path => '/nginx_status', timeout => 5)->{body} // '';
        my ($writing) = $ss =~ /Writing:\s*(\d+)/;
        my $d = rss_delta($idle, $after);
        $res{$case} = { idle => $idle, after => $after, delta => $d, conns => scalar(@socks),
                        records => $records, writing => $writing };
        say_progress(sprintf "   %-8s: %d connections, %s requests in nginx, %s records queued; RSS per worker idle %s kB, now %s kB",
                     $case, scalar(@socks), ($writing // 1) - 1, $records // '-',
                     join('/', map { $idle->{$_} } sort keys %$idle),
                     join('/', map { $after->{$_} } sort keys %$after));
        close $_ for @socks;
        env_stop($t, fast => 1);
    }

    my $w = $res{waiting};
    my $ic = $res{held};
    my $q = $res{queued};
    my $per_hook = sum(values %{ $w->{delta} }) * 1024 / ($w->{records} || 1);
    my $per_conn = sum(values %{ $ic->{delta} }) * 1024 / ($ic->{conns} || 1);
    my $per_rec  = sum(values %{ $q->{delta} }) * 1024 / ($q->{records} || 1);
    my @pids = sort keys %{ $w->{after} };
    my $workers = join(', ', map { fmt($w->{after}{$_} / 1024, 1) . ' MB' } @pids);
    my $deltas = join(', ', map { '+' . fmt($w->{delta}{$_} / 1024, 1) } @pids);
    my $idles = join(', ', map { fmt($w->{idle}{$_} / 1024, 1) } @pids);
    row(n => 6, name => "Memory: RSS per worker with " . fmt($w->{records}) . " webhooks waiting (wait job)",
        value => "$workers ($deltas MB)", baseline => "$idles MB idle", ratio => '-', target => 'report',
        result => ($w->{records} // 0) >= $n ? 'INFO' : 'FAIL (not all queued)');
    row(n => 6, name => 'Memory: bytes per waiting webhook (RSS delta / webhooks) vs per request held by limit_req',
        value => fmt($per_hook) . ' B', baseline => fmt($per_conn) . ' B',
        ratio => sprintf('%.2f', $per_hook / ($per_conn || 1)), target => 'report', result => 'INFO');
    row(n => 6, name => 'Memory: bytes per queued record (' . fmt($q->{records}) . ' records in 200-ID webhooks, wait none, held by dato_rate_limit 1 60s)',
        value => fmt($per_rec) . ' B', baseline => '-', ratio => '-', target => 'report', result => 'INFO');
    push @NOTES, sprintf('6: VmRSS of each worker from /proc, 1 s after the last request, minus the same '
        . 'workers idle; a fresh nginx per case; the API is held by mock faults {"delay_ms":60000} so that '
        . 'records stay queued (dato_publish_timeout 120s); baseline: the same %d webhooks held in the same '
        . 'nginx without the module (limit_req rate=1r/m burst=100000: each waits in nginx; its body stays unread '
        . 'in the socket).', $ic->{conns});
}

###########################################################################
# 7-10: the scheduler (lone webhook, closed loop, default config floods,
# two instances)

# a blocking keep-alive connection for one request at a time
sub ka_open {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 5)
        or die "connect 127.0.0.1:$port: $!\n";
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    binmode $s;
    return $s;
}

# sends $req on $s and reads one answer (Content-Length framed); returns
# { status, body, ms } or undef (closed, timeout)
sub ka_call {
    my ($s, $req, $timeout) = @_;
    my $t0 = Time::HiRes::time();
    my $off = 0;
    while ($off < length $req) {
        my $k = syswrite($s, $req, length($req) - $off, $off);
        return undef unless defined $k && $k > 0;
        $off += $k;
    }
    my $deadline = $t0 + ($timeout // 15);
    my $sel = IO::Select->new($s);
    my $buf = '';
    while (1) {
        my $h = index($buf, "\r\n\r\n");
        if ($h >= 0) {
            my $head = substr($buf, 0, $h);
            my ($len) = $head =~ /^Content-Length:\s*(\d+)/mi;
            $len //= 0;
            if (length($buf) >= $h + 4 + $len) {
                my $t1 = Time::HiRes::time();
                my ($code) = $head =~ m{^HTTP/1\.\d (\d{3})};
                return { status => $code // 0, body => substr($buf, $h + 4, $len),
                         ms => ($t1 - $t0) * 1000, head => $head };
            }
        }
        my $left = $deadline - Time::HiRes::time();
        return undef if $left <= 0;
        next unless $sel->can_read($left);
        my $k = sysread($s, $buf, 65536, length $buf);
        return undef unless $k;
    }
}

sub bulk_publish_req {
    my ($port, @ids) = @_;
    my $body = '{"data":{"type":"item_bulk_publish_operation","relationships":{"items":{"data":['
        . join(',', map { qq({"type":"item","id":"$_"}) } @ids) . ']}}}}';
    return "POST /items/bulk/publish HTTP/1.1\r\nHost: 127.0.0.1:$port\r\n"
         . "Authorization: Bearer test-token\r\nAccept: application/json\r\n"
         . "X-Api-Version: 3\r\nContent-Type: application/vnd.api+json\r\n"
         . 'Content-Length: ' . length($body) . "\r\n\r\n" . $body;
}

sub pct {
    my ($p, @v) = @_;
    @v = sort { $a <=> $b } grep { defined } @v;
    return undef unless @v;
    my $i = ceil($p / 100 * @v) - 1;
    $i = 0 if $i < 0;
    return $v[$i];
}

# 7. the latency of a lone webhook
sub bench_lone {
    my $n = $LONE_N;
    my $gap = $LONE_GAP / 1000;
    say_progress("7. lone webhook: $n spaced webhooks (wait job, default config) vs $n direct bulk publish calls to the mock");
    my $t = env_start(mock => [ '--limit', 60, '--window', 3 ], defaults => 1);
    my $port = $t->port;
    my $mport = $t->mock_port;
    my $hook = ka_open($port);
    my $api = ka_open($mport);
    my $wp = fresh_prefix();
    my $dp = fresh_prefix();
    my (@hook_ms, @api_ms, @bad);

    # warm-up: the module's first call (connection to the mock), the mock's
    # first answer on this connection
    for my $w (0, 1) {
        my $r = ka_call($api, bulk_publish_req($mport, fresh_id($dp, 1_000_000 + $w)));
        die "direct bulk publish call failed\n" unless $r && $r->{status} == 202;
        Time::HiRes::sleep($gap);
        $r = ka_call($hook, post_req($port, '/hook-job', webhook_body(fresh_id($wp, 1_000_000 + $w))));
        die "warm-up webhook failed\n" unless $r;
        Time::HiRes::sleep($gap);
    }

    for my $i (1 .. $n) {
        # alternate the order, so that both see the same conditions
        for my $which ($i % 2 ? ('api', 'hook') : ('hook', 'api')) {
            my $r;
            if ($which eq 'api') {
                $r = ka_call($api, bulk_publish_req($mport, fresh_id($dp, $i)));
                if ($r && $r->{status} == 202) { push @api_ms, $r->{ms} }
                else { push @bad, "direct call $i: " . ($r ? $r->{status} : 'no answer') }
                $api = ka_open($mport) unless $r;
            } else {
                $r = ka_call($hook, post_req($port, '/hook-job', webhook_body(fresh_id($wp, $i))));
                if ($r && $r->{status} == 202 && $r->{body} =~ /"type":"job","id":"\d+"/) { push @hook_ms, $r->{ms} }
                else { push @bad, "webhook $i: " . ($r ? "$r->{status} $r->{body}" : 'no answer') }
                $hook = ka_open($port) unless $r;
            }
            Time::HiRes::sleep($gap);
        }
    }
    close $hook;
    close $api;
    my $st = $t->mock_stats;
    env_stop($t);

    my $h50 = median(@hook_ms);
    my $a50 = median(@api_ms);
    die "no answers: @bad\n" unless defined $h50 && defined $a50;
    my $d = $h50 - $a50;
    my $ok = $d <= 5 && !@bad;
    say_progress(sprintf '   webhook p50 %.2f ms (min %.2f, p90 %.2f, max %.2f); direct call p50 %.2f ms (min %.2f, p90 %.2f, max %.2f)',
                 $h50, pct(0, @hook_ms), pct(90, @hook_ms), pct(100, @hook_ms),
                 $a50, pct(0, @api_ms), pct(90, @api_ms), pct(100, @api_ms));
    row(n => 7, name => 'Lone webhook: job-ID latency (wait job, default config) vs one bulk publish call made directly to the mock',
        value => fmt($h50, 2) . ' ms', baseline => fmt($a50, 2) . ' ms',
        ratio => sprintf('+%.2f ms', $d), target => '<= +5 ms', result => pass($ok));
    push @NOTES, sprintf('7: medians of %d webhooks (fresh ID each, one keep-alive connection, %d ms apart) '
        . 'and %d bulk publish calls of one fresh ID sent by bench.pl to the mock over its own keep-alive '
        . 'connection, interleaved; webhook p90 %.2f ms, max %.2f ms; direct p90 %.2f ms, max %.2f ms; '
        . 'the mock saw %d requests, statuses %s%s.',
        scalar(@hook_ms), $LONE_GAP, scalar(@api_ms), pct(90, @hook_ms), pct(100, @hook_ms),
        pct(90, @api_ms), pct(100, @api_ms), $st->{requests},
        join(',', map { "$_:$st->{status_counts}{$_}" } sort keys %{ $st->{status_counts} }),
        @bad ? '; failed: ' . join('; ', @bad[0 .. ($#bad < 2 ? $#bad : 2)]) : '');
}

# the lua-nginx-module baseline of 8 (t/bench/lua_batcher.lua)
my @LUA_MODULES = ('/usr/lib/nginx/modules/ndk_http_module.so',
                   '/usr/lib/nginx/modules/ngx_http_lua_module.so');

sub lua_conf {
    my ($t, %o) = @_;
    my $tmp = $t->tmpdir;
    my $workers = $o{workers} // 2;
    my $rlimit = $NOFILE > 1024 ? "worker_rlimit_nofile $NOFILE;" : '';
    my $mport = $t->mock_port;
    my $load = join '', map { "load_module $_;\n" } @LUA_MODULES;
    return <<"EOF";
$load
daemon off;
master_process on;
worker_processes $workers;
$rlimit
pid $tmp/nginx.pid;
error_log $tmp/error.log notice;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path $tmp/body;
    proxy_temp_path $tmp/proxy;
    fastcgi_temp_path $tmp/fastcgi;
    uwsgi_temp_path $tmp/uwsgi;
    scgi_temp_path $tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_buffer_size 16k;

    lua_package_path "$BENCH_DIR/?.lua;;";
    init_worker_by_lua_block {
        require("lua_batcher").configure("127.0.0.1", $mport, "test-token")
    }

    server {
        listen 127.0.0.1:%%PORT%% backlog=8192;

        location = /hook-job {
            content_by_lua_block { require("lua_batcher").handle() }
        }
    }
}
EOF
}

sub lua_start {
    my (%o) = @_;
    for (@LUA_MODULES) {
        die "$_ missing: sh t/install.sh libnginx-mod-http-lua\n" unless -f $_;
    }
    my $t = env_start(%o, start => 0);
    $t->run(raw => lua_conf($t, %o));
    return $t;
}

# the answer counts of t/bench/webhook_jobs.lua in a wrk result
sub answers {
    my ($w) = @_;
    my ($a, $q, $o) = $w->{raw} =~ /BENCH_ANSWERS accepted (\d+) queued (\d+) other (\d+)/;
    return defined $a ? { accepted => $a, queued => $q, other => $o } : undef;
}

sub answers_str {
    my ($w) = @_;
    my $a = answers($w) or return 'answer counts n/a';
    return "$a->{accepted} with a job ID, $a->{queued} queued (no job ID), $a->{other} other";
}

# the sockets each worker holds: { pid => n }
sub sockets_of {
    my ($t) = @_;
    my %n;
    for my $pid (workers_of($t)) {
        opendir(my $dh, "/proc/$pid/fd") or next;
        $n{$pid} = grep { (readlink("/proc/$pid/fd/$_") // '') =~ /^socket:/ } readdir $dh;
        closedir $dh;
    }
    return \%n;
}

# "a/b": the sockets each worker holds now less $before (sockets_of)
sub spread_since {
    my ($t, $before) = @_;
    my $now = sockets_of($t);
    return join '/', map { ($now->{$_} // 0) - ($before->{$_} // 0) } sort { $a <=> $b } keys %$now;
}

sub closed_run {
    my ($t, $seconds, $conns) = @_;
    my $m0 = $t->mock_stats;
    my $s0 = $t->{bench_idle_sockets} // sockets_of($t);
    my $h = wrk_start(t => $t, path => '/hook-job', script => "$BENCH_DIR/webhook_jobs.lua",
                      lua => [ 'fresh', fresh_prefix() ], seconds => $seconds,
                      conns => $conns, threads => 2, timeout => 10);
    # how the kernel spread wrk's connections over the workers: sockets
    # now less sockets before (the API connections may add one or two)
    Time::HiRes::sleep($seconds > 2 ? 1 : $seconds / 2);
    my $spread = spread_since($t, $s0);
    my $w = wrk_wait($h);
    die "wrk failed:\n$w->{raw}\n" unless defined $w->{rps};
    my $a = answers($w) or die "no BENCH_ANSWERS line from wrk:\n$w->{raw}\n";
    my ($acc, $q, $o) = @$a{qw(accepted queued other)};
    my ($secs) = $w->{raw} =~ /\d+ requests in ([\d.]+)s/;
    $secs ||= $seconds;
    my $m1 = $t->mock_stats;
    my $r429 = ($m1->{status_counts}{429} // 0) - ($m0->{status_counts}{429} // 0);
    return { %$w, accepted => $acc, queued => $q, other => $o, jobs_per_s => $acc / $secs,
             calls => $m1->{requests} - $m0->{requests}, r429 => $r429, secs => $secs,
             spread => $spread };
}

# 8. closed loop: the module vs a lua-nginx-module batcher
sub bench_closed {
    my @wps = (2);
    push @wps, 1 if $CLOSED_WP1;
    for my $wp (@wps) {
        my $pairs = $wp == 2 ? $CLOSED_PAIRS : 1;
        say_progress("8. closed loop: wrk -c$CLOSED_C -d${CLOSED_S}s fresh IDs, wait job, worker_processes $wp, "
                     . "default config vs lua batcher, $pairs x");
        my ($tm, $tl);
        my $ok = eval {
            $tm = env_start(workers => $wp, mock => [ '--limit', 60, '--window', 3 ], defaults => 1);
            $tl = lua_start(workers => $wp, mock => [ '--limit', 60, '--window', 3 ]);
            # warm-up: connections to the mock, the first calls
            closed_run($_, 2, $CLOSED_C) for $tm, $tl;
            Time::HiRes::sleep(3);
            $_->{bench_idle_sockets} = sockets_of($_) for $tm, $tl;
            my (@mod, @lua);
            for my $i (1 .. $pairs) {
                for my $which ($i % 2 ? ('module', 'lua') : ('lua', 'module')) {
                    my $r = closed_run($which eq 'module' ? $tm : $tl, $CLOSED_S, $CLOSED_C);
                    say_progress(sprintf '   %-6s %7.1f webhooks/s with a job ID (%d accepted, %d queued, %d other; p50 %s ms, p99 %s ms, socket errors %d); %d API calls (%.1f/s), %d x 429; connections per worker %s',
                                 $which, $r->{jobs_per_s}, $r->{accepted}, $r->{queued}, $r->{other},
                                 fmt($r->{p50}, 1), fmt($r->{p99}, 1), $r->{errors}, $r->{calls},
                                 $r->{calls} / $r->{secs}, $r->{r429}, $r->{spread});
                    push @{ $which eq 'module' ? \@mod : \@lua }, $r;
                }
            }
            my $m = median(map { $_->{jobs_per_s} } @mod);
            my $l = median(map { $_->{jobs_per_s} } @lua);
            my @ratios = map { $mod[$_]{jobs_per_s} / ($lua[$_]{jobs_per_s} || 1) } 0 .. $#mod;
            my $ratio = median(@ratios);
            my $bad = 0;
            $bad += $_->{other} + $_->{errors} for @mod;
            row(n => 8, name => "Closed loop: webhooks/s answered with a job ID, wrk -c$CLOSED_C, default config, worker_processes $wp, vs a lua-nginx-module batcher (200 ms window)",
                value => fmt($m, 1) . '/s', baseline => fmt($l, 1) . '/s',
                ratio => sprintf('%.2f', $ratio), target => '>= 3.00', result => pass($ratio >= 3 && !$bad));
            push @NOTES, sprintf('8 (worker_processes %d): %d pair(s) of wrk -t2 -c%d -d%ds runs (fresh IDs, t/bench/webhook_jobs.lua '
                . 'counts the 202 answers that carry a job ID), module and baseline back to back in alternating order, each '
                . 'nginx with its own mock at 60 calls / 3 s; ratios per pair: %s; module webhooks/s per run: %s, wrk '
                . 'connections per worker (sockets during the run less before): %s; module: p50 %s ms, p99 %s ms, %s API calls/s, '
                . '%d x 429, answers without job ID %d, other %d, socket errors %d; lua batcher (t/bench/lua_batcher.lua): '
                . 'p50 %s ms, p99 %s ms, %s API calls/s, %d x 429, without job ID %d, other %d.',
                $wp, $pairs, $CLOSED_C, $CLOSED_S, join(', ', map { sprintf '%.2f', $_ } @ratios),
                join(', ', map { fmt($_->{jobs_per_s}, 1) } @mod), join(', ', map { $_->{spread} } @mod),
                fmt(median(map { $_->{p50} } @mod), 1), fmt(median(map { $_->{p99} } @mod), 1),
                fmt(median(map { $_->{calls} / $_->{secs} } @mod), 1), sum(map { $_->{r429} } @mod),
                sum(map { $_->{queued} } @mod), sum(map { $_->{other} } @mod), sum(map { $_->{errors} } @mod),
                fmt(median(map { $_->{p50} } @lua), 1), fmt(median(map { $_->{p99} } @lua), 1),
                fmt(median(map { $_->{calls} / $_->{secs} } @lua), 1), sum(map { $_->{r429} } @lua),
                sum(map { $_->{queued} } @lua), sum(map { $_->{other} } @lua));
            1;
        };
        my $err = $@;
        env_stop($tm, fast => 1) if $tm;
        env_stop($tl, fast => 1) if $tl;
        die $err unless $ok;
    }
}

# records published per second from the mock's log: distinct IDs of the
# calls answered 202 between $from and $to, and the calls of the whole run
sub flood_count {
    my ($log, $from, $to, @prefixes) = @_;
    my (%ids, %by);
    my %c = (pub => 0, poll => 0, r429 => 0, all => 0, pub_all => 0, poll_all => 0, small => 0);
    for my $r (@$log) {
        $c{all}++;
        $c{r429}++ if $r->{status} == 429;
        my $pub = $r->{path} =~ m{^/items/bulk/publish};
        $c{pub_all}++ if $pub;
        $c{poll_all}++ if $r->{path} =~ m{^/job-results/};
        next unless $r->{t} >= $from && $r->{t} < $to;
        if ($pub) {
            $c{pub}++;
            next unless $r->{status} == 202;
            $ids{$_} = 1 for @{ $r->{ids} };
            $c{small}++ if @{ $r->{ids} } < 100;
        } elsif ($r->{path} =~ m{^/job-results/}) {
            $c{poll}++;
        }
    }
    for my $id (keys %ids) {
        for my $p (@prefixes) { if (index($id, $p) == 0) { $by{$p}++; last } }
    }
    my $span = $to - $from;
    return { %c, records => scalar(keys %ids), rate => keys(%ids) / $span, span => $span,
             by => \%by, fill => $c{pub} ? keys(%ids) / $c{pub} : 0 };
}

sub status_str {
    my ($st) = @_;
    return join(',', map { "$_:$st->{status_counts}{$_}" } sort keys %{ $st->{status_counts} });
}

# 9. floods with the module's default configuration
sub bench_flood_default {
    my (%o) = @_;
    my $limit = $o{limit};
    my $ceiling = $limit / 3 * 200;
    my $allowed = $o{per_minute} ? ceil($FLOOD_S / 60) * $o{per_minute} : 0;
    say_progress(sprintf '9. flood, default config (no dato_* directive): mock at %d calls / 3 s, wrk -c%d %ds, fresh IDs, wait job',
                 $limit, $FLOOD_C, $FLOOD_S);
    my $t = env_start(mock => [ '--limit', $limit, '--window', 3 ], defaults => 1,
                      worker_connections => ($FLOOD_C + 1024 > 4096 ? $FLOOD_C + 1024 : 4096));
    my $prefix = fresh_prefix();
    my $s0 = sockets_of($t);
    my $h = wrk_start(t => $t, path => '/hook-job', lua => [ 'fresh', $prefix ],
                      script => "$BENCH_DIR/webhook_jobs.lua",
                      seconds => $FLOOD_S, conns => $FLOOD_C, threads => 2, timeout => 10);
    Time::HiRes::sleep(2);
    my $spread = spread_since($t, $s0);
    my $w = wrk_wait($h);
    die "wrk failed:\n$w->{raw}\n" unless defined $w->{rps};
    Time::HiRes::sleep(1);
    my $st = $t->mock_stats;
    my @log = mock_log($t);
    env_stop($t, fast => 1);

    my $c = flood_count(\@log, $w->{t0} + 3, $w->{t0} + $FLOOD_S);
    my $target = 0.95 * $ceiling;
    my $r429 = $st->{status_counts}{429} // 0;
    row(n => 9, name => "Flood, default config: records/s published, mock at $limit calls / 3 s",
        value => fmt($c->{rate}) . '/s', baseline => fmt($ceiling) . '/s (limit x 200)',
        ratio => sprintf('%.3f', $c->{rate} / $ceiling), target => '>= ' . fmt($target) . '/s (0.95)',
        result => pass($c->{rate} >= $target));
    row(n => 9, name => "Flood, default config: 429s at the mock, mock at $limit calls / 3 s, ${FLOOD_S} s flood",
        value => $r429, baseline => '-', ratio => '-',
        target => $o{per_minute} ? "<= $allowed (1 per minute)" : '0', result => pass($r429 <= $allowed));
    push @NOTES, sprintf('9 (mock %d / 3 s): no dato_* directive but dato_api_url and dato_api_token; %.1f s window from 3 s '
        . 'after the start; %d publish calls (%.1f records each, %d of them with < 100, %.2f calls/s), %d job polls (%.2f/s); '
        . 'wrk connections per worker %s; webhooks answered '
        . '%s/s by nginx (wrk: %s), p50 %s ms, p99 %s ms, non-2xx %d, socket errors %d; mock total: %d requests, '
        . '%d publish calls, %d job polls, %d records published, statuses %s.',
        $limit, $c->{span}, $c->{pub}, $c->{fill}, $c->{small}, $c->{pub} / $c->{span}, $c->{poll}, $c->{poll} / $c->{span},
        $spread, fmt($w->{rps}), answers_str($w), fmt($w->{p50}), fmt($w->{p99}), $w->{non2xx}, $w->{errors},
        $st->{requests}, $c->{pub_all}, $c->{poll_all}, $st->{unique_published_ids} // 0, status_str($st));
}

# 10. two nginx instances, one token, one API
sub bench_two {
    my $limit = 60;
    my $ceiling = $limit / 3 * 200;
    # each instance takes the flood one instance takes in row 9
    my $conns = $FLOOD_C;
    say_progress("10. two instances: two nginx (default config, same token), one mock at $limit / 3 s, "
                 . "each flooded as in 9, wrk -c$conns ${FLOOD_S}s at once");
    my $wc = $conns + 1024 > 4096 ? $conns + 1024 : 4096;
    my ($t1, $t2);
    my $ok = eval {
        $t1 = env_start(mock => [ '--limit', $limit, '--window', 3 ], defaults => 1, worker_connections => $wc);
        $t2 = env_start(mock_url => $t1->mock_url, defaults => 1, worker_connections => $wc);
        my ($p1, $p2) = (fresh_prefix(), fresh_prefix());
        my ($s1, $s2) = (sockets_of($t1), sockets_of($t2));
        my $h1 = wrk_start(t => $t1, path => '/hook-job', lua => [ 'fresh', $p1 ],
                           script => "$BENCH_DIR/webhook_jobs.lua",
                           seconds => $FLOOD_S, conns => $conns, threads => 1, timeout => 10);
        my $h2 = wrk_start(t => $t2, path => '/hook-job', lua => [ 'fresh', $p2 ],
                           script => "$BENCH_DIR/webhook_jobs.lua",
                           seconds => $FLOOD_S, conns => $conns, threads => 1, timeout => 10);
        Time::HiRes::sleep(2);
        my $spread = spread_since($t1, $s1) . ' and ' . spread_since($t2, $s2);
        my $w1 = wrk_wait($h1);
        my $w2 = wrk_wait($h2);
        die "wrk failed:\n$w1->{raw}\n$w2->{raw}\n" unless defined $w1->{rps} && defined $w2->{rps};
        Time::HiRes::sleep(1);
        my $st = $t1->mock_stats;
        my @log = mock_log($t1);
        my $t0 = $w1->{t0} > $w2->{t0} ? $w1->{t0} : $w2->{t0};
        my $c = flood_count(\@log, $t0 + 3, $t0 + $FLOOD_S, $p1, $p2);
        my $r429 = $st->{status_counts}{429} // 0;
        my $share = $st->{requests} ? $r429 / $st->{requests} : 0;
        row(n => 10, name => 'Two instances (same token, default config): records/s published together, mock at 60 calls / 3 s',
            value => fmt($c->{rate}) . '/s', baseline => fmt($ceiling) . '/s (limit x 200)',
            ratio => sprintf('%.3f', $c->{rate} / $ceiling), target => '>= ' . fmt(0.9 * $ceiling) . '/s (0.90)',
            result => pass($c->{rate} >= 0.9 * $ceiling));
        row(n => 10, name => 'Two instances: 429s at the mock / API calls',
            value => "$r429 / $st->{requests}", baseline => '-', ratio => sprintf('%.2f %%', 100 * $share),
            target => '<= 1 %', result => pass($share <= 0.01));
        push @NOTES, sprintf('10: two nginx (2 workers each, separate shared zones), both dato_api_url of one mock; '
            . '%.1f s window; records/s by instance: %s / %s; %d publish calls (%.1f records each, %d of them with < 100), '
            . '%d job polls; wrk connections per worker %s; '
            . 'webhooks answered %s/s and %s/s (wrk -t1 -c%d each; %s / %s), socket errors %d / %d; '
            . 'mock total: %d requests, %d publish calls, %d job polls, %d records published, statuses %s.',
            $c->{span}, fmt(($c->{by}{$p1} // 0) / $c->{span}), fmt(($c->{by}{$p2} // 0) / $c->{span}),
            $c->{pub}, $c->{fill}, $c->{small}, $c->{poll}, $spread, fmt($w1->{rps}), fmt($w2->{rps}), $conns,
            answers_str($w1), answers_str($w2), $w1->{errors}, $w2->{errors}, $st->{requests},
            $c->{pub_all}, $c->{poll_all}, $st->{unique_published_ids} // 0, status_str($st));
        1;
    };
    my $err = $@;
    env_stop($t2, fast => 1) if $t2;
    env_stop($t1, fast => 1) if $t1;
    die $err unless $ok;
}

###########################################################################
# main

sub machine {
    my $model = 'unknown';
    if (open my $fh, '<', '/proc/cpuinfo') {
        while (my $l = <$fh>) { if ($l =~ /^model name\s*:\s*(.*)/) { $model = $1; last } }
    }
    my $nproc = `nproc 2>/dev/null`; chomp $nproc;
    my $nginx = `/usr/sbin/nginx -v 2>&1`; chomp $nginx; $nginx =~ s/^nginx version: //;
    my $wrk = `wrk -v 2>&1 | head -1`; ($wrk) = $wrk =~ /^(wrk \S+)/;
    my $load = slurp('/proc/loadavg'); $load =~ s/^(\S+ \S+ \S+).*/$1/s;
    return ($nproc, $model, $nginx, $wrk // 'wrk', $load);
}

my ($nproc, $model, $nginx_v, $wrk_v, $load0) = machine();
my $module = $ENV{DATO_MODULE} // DatoTest::repo_root() . '/build/ngx_http_dato_module.so';
die "module $module not found (build it first, or set DATO_MODULE)\n" unless -f $module;
my @mst = stat $module;
say_progress("module $module (" . strftime('%Y-%m-%d %H:%M:%S', localtime $mst[9]) . "), "
             . "$nproc CPUs ($model), open files limit $NOFILE, load $load0");
if ($FLOOD_C + 100 > $NOFILE) {
    $FLOOD_C = $NOFILE - 200;
    push @NOTES, "3: the open files limit ($NOFILE) caps the flood at $FLOOD_C connections.";
}
if ($MEM_N + 100 > $NOFILE) {
    $MEM_N = $NOFILE - 200;
    push @NOTES, "6: the open files limit ($NOFILE) caps the waiting webhooks at $MEM_N.";
}

my @plan = (
    [ 1 => \&bench_ingest ],
    [ 2 => \&bench_callgrind ],
    [ 3 => sub {
        bench_flood(calls => 50, period => 3, poll => 'off');
        bench_flood(calls => 60, period => 3, poll => 'off');
        bench_flood(calls => 50, period => 3, poll => 'on');
      } ],
    [ 4 => \&bench_calls ],
    [ 5 => \&bench_loop ],
    [ 6 => \&bench_memory ],
    [ 7 => \&bench_lone ],
    [ 8 => \&bench_closed ],
    [ 9 => sub {
        bench_flood_default(limit => 60);
        bench_flood_default(limit => 30, per_minute => 1);
      } ],
    [ 10 => \&bench_two ],
);

my $failed_runs = 0;
for my $p (@plan) {
    next unless $ONLY{ $p->[0] };
    my $ok = eval { $p->[1]->(); 1 };
    unless ($ok) {
        my $e = $@ // 'unknown error';
        chomp $e;
        $failed_runs++;
        say_progress("measurement $p->[0] failed: $e");
        row(n => $p->[0], name => "measurement $p->[0]", value => 'error', baseline => '-',
            ratio => '-', target => '-', result => 'ERROR');
        push @NOTES, "$p->[0]: error: $e";
    }
}

my $elapsed = Time::HiRes::time() - $T_START;
my @mst2 = stat $module;
push @NOTES, 'the module file was replaced during the run (built '
    . strftime('%H:%M:%S', localtime $mst2[9]) . '): nginx processes started later ran the new build.'
    if @mst2 && $mst2[9] != $mst[9];
my $load1 = slurp('/proc/loadavg'); $load1 =~ s/^(\S+ \S+ \S+).*/$1/s;

print "\n## Benchmark results\n\n";
printf "- date: %s\n", strftime('%Y-%m-%d %H:%M:%S %Z', localtime);
printf "- machine: %s CPUs, %s; load average before/after: %s / %s\n", $nproc, $model, $load0, $load1;
printf "- nginx %s (packaged), %s, valgrind %s; module %s built %s\n", $nginx_v, $wrk_v,
    do { my $v = `valgrind --version 2>/dev/null`; chomp $v; $v =~ s/^valgrind-//; $v || '?' },
    $module, strftime('%Y-%m-%d %H:%M', localtime $mst[9]);
printf "- command: %s%s (%d s)\n", 'make bench', ($QUICK ? ' (BENCH_QUICK=1)' : ''), $elapsed;
print "\n| # | measurement | value | baseline | ratio | target | result |\n";
print "|---|---|---|---|---|---|---|\n";
for my $r (@ROWS) {
    print '| ' . join(' | ', map { my $v = $_ // '-'; $v =~ s/\|/\\|/g; $v }
                      @$r{qw(n name value baseline ratio target result)}) . " |\n";
}
print "\nNotes:\n\n";
print "- $_\n" for map { s/\n/\n  /gr } @NOTES;
print "\n";

my $fails = grep { ($_->{result} // '') =~ /^(FAIL|ERROR)/ } @ROWS;
exit($fails ? 1 : 0);
