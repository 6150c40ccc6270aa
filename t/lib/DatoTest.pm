package DatoTest;

# Test harness for ngx_http_dato_module.
#
# Starts the packaged nginx (with the module loaded) and the mock DatoCMS
# API in a private temporary directory, talks HTTP/1.1 to both, and checks
# the error log.  Core Perl only.
#
#   use lib 't/lib'; use DatoTest;
#   my $t = DatoTest->new(workers => 1);
#   $t->start_mock;
#   $t->run(http => 'server { listen 127.0.0.1:%%PORT%%; location /hook {
#                        dato_publish ...; } }');
#   my $r = $t->post_json('/hook', DatoTest::hook(DatoTest::uuid_id(1)));
#   is($r->{status}, 202);
#   $t->done; done_testing;
#
# Helpers shared by the test files.  Functions, imported by name
# (use DatoTest qw(ids_of hook ...)):
#
#   ids_of($from, $n)      record ids uuid_id($from) .. uuid_id($from + $n - 1)
#   hook($id, %a)          a webhook (JSON text) for record $id; %a as for
#                          webhook_data()
#   ids_body(@ids)         the body {"ids":[...]} (JSON text)
#   bulk_body(@ids)        a bulk publish body {"data":{"type":
#                          "item_bulk_publish_operation",...}} (data)
#   json_headers(%more)    request headers { Content-Type: application/json,
#                          %more }, a new hash each time
#   post_req($path, $body, %a)  one JSON POST for parallel_requests()
#   published_ids(@calls)  { id => n } over the mock records answered 202
#   jobs_of($r)            the job ids in the data[] of a webhook's answer
#   max_in_window($w, @calls)  the most mock records within any $w seconds
#
# Methods, for webhooks and what reached the mock (its records are hashes
# with t, method, path, status, ids, job, headers, body):
#
#   $t->post_json($path, $body, %a)  POST $body (data is encoded first) as
#                          application/json; %a adds to or overrides the
#                          request() arguments; answers as json_request()
#   $t->publishes          the mock's POST /items/bulk/publish records,
#                          oldest first
#   $t->calls_for(@ids)    those that carry at least one of @ids
#   $t->published(@ids)    the ids among @ids in a call answered 202
#   $t->wait_published($timeout, @ids)  until all of @ids are published
#   $t->gave_up_lines      the error.log lines "gave up publishing"
#   $t->gave_up_ids        { id => 1 } for the ids those [error] lines name
#   $t->promise_ok($name, @ids)  one test: each of @ids (answered 2xx)
#                          reached the mock in a call answered 202, or is
#                          named in a "gave up publishing" error.log line
#   $t->raw_send($path, $body)  a JSON POST on a raw socket, left unread
#   $t->raw_read($sock, $timeout)  its answer, parsed as json_request()
#   $t->worker_pids        the pids of the running nginx master's children
#                          (its workers), sorted
#   $t->mock_jobs          the mock's job table (GET /__mock/jobs): hashes
#                          with id, ids, fail_ids, items, polls, seen,
#                          failed, successful, status, code (added for
#                          t/17-refused.t)
#
# A second mock, on another loopback address: another harness object, used
# for its mock only, with start_mock('--host', '127.0.0.2', '--port', $p);
# its control calls and mock_url() then use that address.
#
# A DNS server of the test's own (t/dns/dns.pl, UDP on 127.0.0.1), for
# "resolver 127.0.0.1:PORT":
#
#   $t->start_dns(%zone)   starts it, answering from %zone (as dns_set());
#                          returns its port, also $t->dns_port
#   $t->dns_set(%zone)     the answers from now on: name => [addresses],
#                          or 'nxdomain', 'servfail', 'drop' (no answer);
#                          '*' for any other name; unnamed names: NXDOMAIN
#   $t->dns_queries        the queries so far: hashes with t, name, type,
#                          answer (addresses joined by ",", "-" or a kind)
#   $t->stop_dns           stops it (DNS down: queries go unanswered)
#
# DatoTest->new(log_level => 'error') writes "error_log ... error" (as
# Debian's nginx.conf) instead of "debug"; t/20-logs.t uses it.
#
# Environment: TEST_NGINX_BINARY, DATO_MODULE (a path, or "static" for an
# nginx built with --add-module), TEST_NGINX_LEAVE (keep the temp
# dir), TEST_NGINX_USE_VALGRIND, TEST_NGINX_MASTER=off,
# TEST_NGINX_VALGRIND_ALL_LEAKS.

use strict;
use warnings;

use Test::More ();
use IO::Socket::INET;
use IO::Select;
use File::Temp ();
use File::Spec;
use File::Basename ();
use POSIX qw(:sys_wait_h strftime);
use Time::HiRes ();
use JSON::PP ();
use Socket ();
use MIME::Base64 ();
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use Exporter 'import';

our @EXPORT_OK = qw(ids_of hook ids_body bulk_body json_headers post_req
                    published_ids jobs_of max_in_window);

our $VERSION = '0.01';

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

# repository root: t/lib/DatoTest.pm -> <repo>
my $REPO = do {
    my $f = File::Spec->rel2abs(__FILE__);
    File::Basename::dirname(File::Basename::dirname(File::Basename::dirname($f)));
};

# processes started by any harness object in this process: pid => kind
our %RUNNING;
my $CREATOR = $$;
my %USED_PORTS;

sub repo_root { $REPO }

###########################################################################
# construction

sub new {
    my ($class, %opts) = @_;

    my $self = bless {
        workers  => $opts{workers} // 1,
        # DATO_MODULE=static: an nginx with the module built in
        # (--add-module) needs no load_module line
        no_module => ($opts{no_module}
                      || ($ENV{DATO_MODULE} // '') eq 'static') ? 1 : 0,
        valgrind => exists $opts{valgrind} ? $opts{valgrind}
                                           : ($ENV{TEST_NGINX_USE_VALGRIND} ? 1 : 0),
        nginx    => $opts{nginx} // $ENV{TEST_NGINX_BINARY} // '/usr/sbin/nginx',
        module   => $opts{module} // $ENV{DATO_MODULE}
                        // "$REPO/build/ngx_http_dato_module.so",
        mock_script => $opts{mock_script} // "$REPO/t/mock/dato_mock.pl",
        # the error_log level; "error" is what Debian's nginx.conf sets
        log_level => $opts{log_level} // 'debug',
        log_allow => [],
        problems  => [],
        owner     => $$,
    }, $class;

    # Under valgrind the master stays on by default: valgrind follows
    # fork(), so every process gets its own valgrind.<pid>.log, and reload
    # keeps working (in "master_process off" mode nginx 1.22 re-reads the
    # configuration on SIGHUP but never re-registers the listening sockets).
    # master => 0 or TEST_NGINX_MASTER=off selects single-process mode.
    $self->{master} = exists $opts{master} ? ($opts{master} ? 1 : 0)
        : (defined $ENV{TEST_NGINX_MASTER} && $ENV{TEST_NGINX_MASTER} =~ /^(?:0|off|no)$/i)
        ? 0 : 1;

    unless (-x $self->{nginx}) {
        Test::More::BAIL_OUT("nginx binary $self->{nginx} not found or not executable"
                             . " (set TEST_NGINX_BINARY)");
    }

    unless ($self->{no_module}) {
        $self->{module} = File::Spec->rel2abs($self->{module});
        unless (-f $self->{module}) {
            Test::More::BAIL_OUT("module $self->{module} not found: build the module first"
                                 . " (or set DATO_MODULE)");
        }
    }

    if ($self->{valgrind} && !_which('valgrind')) {
        Test::More::BAIL_OUT('TEST_NGINX_USE_VALGRIND is set but valgrind is not installed');
    }

    my $keep = $ENV{TEST_NGINX_LEAVE} ? 1 : 0;
    $self->{tmp} = File::Temp::tempdir('dato-test-XXXXXXXX', TMPDIR => 1,
                                       CLEANUP => !$keep);
    # workers run as an unprivileged user when started by root: they must
    # be able to reach the temp paths inside this directory
    chmod 0755, $self->{tmp};
    Test::More::diag("test directory kept: $self->{tmp}") if $keep;

    return $self;
}

sub tmpdir { $_[0]{tmp} }

# the path of program $prog: on $PATH, else in the usual system directories
sub _which {
    my ($prog) = @_;
    for my $d ((split /:/, $ENV{PATH} // ''), qw(/usr/bin /usr/local/bin /usr/sbin)) {
        return "$d/$prog" if -x "$d/$prog";
    }
    return;
}

###########################################################################
# ports

sub _free_port {
    for (1 .. 50) {
        my $s = IO::Socket::INET->new(
            LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
            Listen => 1, ReuseAddr => 1,
        ) or die "cannot allocate a free port: $!\n";
        my $p = $s->sockport;
        close $s;
        next if $USED_PORTS{$p}++;
        return $p;
    }
    die "cannot allocate a free port\n";
}

sub port  { my $s = shift; $s->{port}  //= _free_port() }
sub port2 { my $s = shift; $s->{port2} //= _free_port() }

###########################################################################
# files

sub _path {
    my ($self, $name) = @_;
    return File::Spec->file_name_is_absolute($name) ? $name : "$self->{tmp}/$name";
}

sub read_file {
    my ($self, $name) = @_;
    my $path = $self->_path($name);
    open my $fh, '<:raw', $path or return undef;
    local $/;
    my $c = <$fh>;
    close $fh;
    return $c // '';
}

sub write_file {
    my ($self, $name, $content) = @_;
    my $path = $self->_path($name);
    open my $fh, '>:raw', $path or die "cannot write $path: $!\n";
    print $fh $content;
    close $fh or die "cannot write $path: $!\n";
    chmod 0644, $path;
    return $path;
}

sub error_log { my $c = $_[0]->read_file('error.log'); $c // '' }

# error log content from byte $offset on (cheap for big debug logs)
sub error_log_since {
    my ($self, $offset) = @_;
    open my $fh, '<:raw', "$self->{tmp}/error.log" or return '';
    seek $fh, $offset // 0, 0;
    local $/;
    my $c = <$fh>;
    close $fh;
    return $c // '';
}

# current error log size, for error_log_since() / wait_for_log(..., $mark)
sub log_mark { -s "$_[0]{tmp}/error.log" || 0 }

###########################################################################
# configuration

sub subst {
    my ($self, $text) = @_;
    return '' unless defined $text;
    $text =~ s/%%PORT%%/$self->port/ge;
    $text =~ s/%%PORT2%%/$self->port2/ge;
    $text =~ s/%%TMP%%/$self->{tmp}/g;
    if ($text =~ /%%MOCK%%/) {
        die "config uses %%MOCK%% but the mock is not started\n"
            unless $self->{mock_port};
        my $u = $self->mock_url;
        $text =~ s/%%MOCK%%/$u/g;
    }
    if ($text =~ /(%%[A-Z0-9_]+%%)/) {
        die "unknown placeholder $1 in config\n";
    }
    return $text;
}

sub write_conf {
    my ($self, %a) = @_;
    my $tmp  = $self->{tmp};
    my $file = $a{file} // 'nginx.conf';
    my $elog = $a{error_log} // "$tmp/error.log";
    my $level = $a{log_level} // $self->{log_level};

    my $conf;
    if (defined $a{raw}) {
        $conf = $self->subst($a{raw});
    } else {
        my $main   = $self->subst($a{main});
        my $events = $self->subst($a{events});
        my $http   = $self->subst($a{http});
        my $load = $self->{no_module} ? '' : "load_module $self->{module};\n";
        my $master = $self->{master} ? 'on' : 'off';
        my $workers = $a{workers} // $self->{workers};

        $conf = <<"EOF";
${load}daemon off;
master_process $master;
worker_processes $workers;
pid $tmp/nginx.pid;
error_log $elog $level;

$main

events {
    worker_connections 1024;
$events
}

http {
    access_log off;
    client_body_temp_path $tmp/body;
    proxy_temp_path $tmp/proxy;
    fastcgi_temp_path $tmp/fastcgi;
    uwsgi_temp_path $tmp/uwsgi;
    scgi_temp_path $tmp/scgi;

$http
}
EOF
    }

    return $self->write_file($file, $conf);
}

###########################################################################
# process helpers

sub _spawn {
    my ($self, $argv, $out, $err) = @_;
    my $pid = fork;
    die "fork failed: $!\n" unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $out or POSIX::_exit(127);
        open STDERR, '>>', ($err // $out) or POSIX::_exit(127);
        { exec { $argv->[0] } @$argv; }
        print STDERR "exec $argv->[0] failed: $!\n";
        POSIX::_exit(127);
    }
    return $pid;
}

# wait for $pid to exit; returns the wait status, or undef if still running
sub _wait_pid {
    my ($pid, $timeout) = @_;
    my $deadline = Time::HiRes::time() + $timeout;
    while (1) {
        my $r = waitpid($pid, WNOHANG);
        return $? if $r == $pid;
        return 0 if $r < 0;              # not our child / already reaped
        return undef if Time::HiRes::time() >= $deadline;
        Time::HiRes::sleep(0.02);
    }
}

sub _children {
    my ($ppid) = @_;
    my @c;
    opendir my $d, '/proc' or return;
    for my $p (grep /^\d+$/, readdir $d) {
        open my $fh, '<', "/proc/$p/stat" or next;
        my $s = <$fh>;
        close $fh;
        next unless defined $s;
        my $i = rindex($s, ')');
        next if $i < 0;
        my @f = split ' ', substr($s, $i + 2);
        push @c, $p if ($f[1] // -1) == $ppid;
    }
    closedir $d;
    return @c;
}

# TERM, then KILL (also the children of a killed nginx master); bounded
sub _kill_hard {
    my ($pid, $grace) = @_;
    my @kids = _children($pid);
    kill 'TERM', $pid;
    my $st = _wait_pid($pid, $grace // 5);
    if (!defined $st) {
        kill 'KILL', $pid;
        $st = _wait_pid($pid, 5);
    }
    kill 'KILL', grep { kill 0, $_ } @kids;
    delete $RUNNING{$pid};
    return $st;
}

sub _status_str {
    my ($st) = @_;
    return 'still running' unless defined $st;
    return 'exited with code ' . ($st >> 8) if ($st & 127) == 0;
    return 'killed by signal ' . ($st & 127);
}

###########################################################################
# nginx

sub _nginx_argv {
    my ($self, $conf, $elog, @extra) = @_;
    my @argv = ($self->{nginx}, '-p', "$self->{tmp}/", '-c', $conf, '-e', $elog, @extra);
    if ($self->{valgrind} && !grep { $_ eq '-t' } @extra) {
        unshift @argv, 'valgrind', '--tool=memcheck', '--leak-check=full',
            '--error-exitcode=0', '--num-callers=30',
            "--log-file=$self->{tmp}/valgrind.%p.log";
    }
    return @argv;
}

sub _count {
    my ($text, $re) = @_;
    my $n = () = $text =~ /$re/g;
    return $n;
}

sub _startup_timeout { $_[0]{valgrind} ? 60 : 10 }

sub try_run {
    my ($self, %a) = @_;
    my $ok = eval { $self->run(%a); 1 };
    $self->{last_error} = $@ unless $ok;
    return $ok ? 1 : 0;
}

sub run {
    my ($self, %a) = @_;
    die "nginx already running\n" if $self->{pid};

    my $uses_port = grep { defined && /%%PORT%%/ } @a{qw(main http events raw)};
    my $conf = $self->write_conf(%a);
    my $tmp = $self->{tmp};
    my $elog = "$tmp/error.log";

    my $before = $self->log_mark;
    my $pid = $self->_spawn([ $self->_nginx_argv($conf, $elog) ], "$tmp/nginx.stderr");
    $RUNNING{$pid} = 'nginx';
    $self->{pid} = $pid;
    $self->{running_workers} = $a{workers} // $self->{workers};

    my $deadline = Time::HiRes::time() + $self->_startup_timeout;
    my $port_ok = !$uses_port;
    my $workers_ok = !$self->{master};
    my $quiet = ($a{log_level} // $self->{log_level})
                !~ /^(?:debug|info|notice)$/;
    my $pid_ok = 0;

    while (Time::HiRes::time() < $deadline) {
        my $r = waitpid($pid, WNOHANG);
        if ($r == $pid) {
            my $st = $?;
            delete $RUNNING{$pid};
            delete $self->{pid};
            die "nginx failed to start (" . _status_str($st) . ")\n"
                . $self->_startup_diag($before);
        }
        $pid_ok ||= -s "$tmp/nginx.pid";
        if (!$port_ok) {
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                PeerPort => $self->port, Proto => 'tcp', Timeout => 1);
            if ($s) { close $s; $port_ok = 1 }
        }
        if (!$workers_ok && $quiet) {

            # "start worker process" is a notice: count the children
            $workers_ok = _children($pid) >= $self->{running_workers};

        } elsif (!$workers_ok) {
            my $log = $self->error_log_since($before);
            $workers_ok = _count($log, qr/start worker process \d+/)
                          >= $self->{running_workers};
        }
        return $self if $port_ok && $workers_ok && $pid_ok;
        Time::HiRes::sleep(0.03);
    }

    my $diag = $self->_startup_diag($before);
    $self->_stop_hard;
    die "nginx did not come up within " . $self->_startup_timeout . " s\n$diag";
}

sub _startup_diag {
    my ($self, $before) = @_;
    my $log = $self->error_log_since($before);
    my @l = grep { !/\[debug\]/ } split /\n/, $log;
    @l = @l[-40 .. -1] if @l > 40;
    my $err = $self->read_file('nginx.stderr') // '';
    return "--- error.log (non-debug lines) ---\n" . join("\n", @l) . "\n"
         . ($err ne '' ? "--- stderr ---\n$err" : '');
}

sub pid { $_[0]{pid} }

# the pids of the running nginx master's children (its workers), sorted
sub worker_pids {
    my ($self) = @_;
    return () unless $self->{pid} && $self->{master};
    return sort { $a <=> $b } _children($self->{pid});
}

sub test_conf {
    my ($self, %a) = @_;
    my $tmp = $self->{tmp};
    my $elog = "$tmp/test_conf.error.log";
    unlink $elog, "$tmp/test_conf.out";
    my $conf = $self->write_conf(%a, file => 'nginx-test.conf', error_log => $elog);
    my $pid = $self->_spawn([ $self->_nginx_argv($conf, $elog, '-t') ], "$tmp/test_conf.out");
    my $st = _wait_pid($pid, 30);
    if (!defined $st) {
        $st = _kill_hard($pid, 1);
        $st = 255 << 8;
    }
    my $out = $self->read_file('test_conf.out') // '';
    my $rc = ($st & 127) ? 128 + ($st & 127) : $st >> 8;
    return wantarray ? ($rc, $out) : $rc;
}

sub reload {
    my ($self, %a) = @_;
    die "nginx is not running\n" unless $self->{pid};
    $self->write_conf(%a) if %a;

    my $before = $self->log_mark;
    my $old = $self->{running_workers};
    my $new = $a{workers} // $self->{workers};
    kill 'HUP', $self->{pid};

    my $deadline = Time::HiRes::time() + $self->_startup_timeout;
    while (Time::HiRes::time() < $deadline) {
        my $log = $self->error_log_since($before);
        if ($log =~ /\[emerg\]/ && $log =~ /reconfiguring/) {
            Time::HiRes::sleep(0.1);
            return 0;   # new configuration rejected, old one keeps running
        }
        if ($self->{master}) {
            if (_count($log, qr/start worker process \d+/) >= $new
                && _count($log, qr/gracefully shutting down/) >= $old)
            {
                $self->{running_workers} = $new;
                return 1;
            }
        } elsif ($log =~ /reconfiguring/) {
            Time::HiRes::sleep(0.5);
            return 1;
        }
        Time::HiRes::sleep(0.03);
    }
    return 0;
}

sub stop {
    my ($self, %a) = @_;
    my $pid = $self->{pid} or return;
    my $grace = $a{timeout} // ($self->{valgrind} ? 60 : 20);
    my @kids = _children($pid);

    kill 'QUIT', $pid;
    my $st = _wait_pid($pid, $grace);
    if (!defined $st) {
        push @{ $self->{problems} }, "nginx did not stop gracefully within $grace s";
        $st = _kill_hard($pid, 5);
    }
    kill 'KILL', grep { kill 0, $_ } @kids;   # orphaned workers, if any
    delete $RUNNING{$pid};
    delete $self->{pid};
    $self->{exit_status} = $st;
    if (defined $st && $st != 0) {
        push @{ $self->{problems} }, 'nginx master ' . _status_str($st);
    }
    return $st;
}

sub stop_fast {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    my @kids = _children($pid);
    kill 'TERM', $pid;
    my $st = _wait_pid($pid, $self->{valgrind} ? 60 : 10);
    if (!defined $st) {
        push @{ $self->{problems} }, 'nginx did not exit on SIGTERM';
        $st = _kill_hard($pid, 1);
    }
    kill 'KILL', grep { kill 0, $_ } @kids;
    delete $RUNNING{$pid};
    delete $self->{pid};
    $self->{exit_status} = $st;
    return $st;
}

sub _stop_hard {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    _kill_hard($pid, 5);
}

###########################################################################
# mock API

sub start_mock {
    my ($self, @args) = @_;
    die "mock already running\n" if $self->{mock_pid};
    die "mock script $self->{mock_script} not found\n" unless -f $self->{mock_script};
    my $tmp = $self->{tmp};
    unlink "$tmp/mock.out";
    my %arg = @args % 2 ? () : @args;
    $self->{mock_host} = $arg{'--host'} // '127.0.0.1';
    my @port = grep({ $_ eq '--port' } @args) ? () : ('--port', '0');
    my $pid = $self->_spawn([ $^X, $self->{mock_script}, @port,
                              '--log', "$tmp/mock.log", @args ],
                            "$tmp/mock.out", "$tmp/mock.err");
    $RUNNING{$pid} = 'mock';
    $self->{mock_pid} = $pid;

    my $deadline = Time::HiRes::time() + 10;
    while (Time::HiRes::time() < $deadline) {
        my $out = $self->read_file('mock.out') // '';
        if ($out =~ /^READY (\d+)\s*$/m) {
            $self->{mock_port} = $1;
            return $1;
        }
        if (waitpid($pid, WNOHANG) == $pid) {
            my $st = $?;
            delete $RUNNING{$pid};
            delete $self->{mock_pid};
            die "mock exited before READY (" . _status_str($st) . ")\n"
                . ($self->read_file('mock.err') // '');
        }
        Time::HiRes::sleep(0.03);
    }
    my $err = $self->read_file('mock.err') // '';
    _kill_hard($pid, 2);
    delete $self->{mock_pid};
    die "mock did not print READY within 10 s\n$err";
}

sub mock_port { $_[0]{mock_port} }

sub mock_url {
    my ($self) = @_;
    die "mock not started\n" unless $self->{mock_port};
    return "http://$self->{mock_host}:$self->{mock_port}";
}

sub _mock_call {
    my ($self, $method, $path, $data) = @_;
    die "mock not started\n" unless $self->{mock_port};
    my %req = (method => $method, path => $path, port => $self->{mock_port},
               addr => $self->{mock_host}, timeout => 10);
    if (defined $data) {
        $req{body} = $JSON->encode($data);
        $req{headers} = json_headers();
    }
    my $r = $self->request(%req);
    die "mock $method $path failed: "
        . ($r->{status} ? "status $r->{status}: $r->{body}" : $r->{error}) . "\n"
        unless $r->{status} >= 200 && $r->{status} < 300;
    return $r;
}

sub _decode_or_die {
    my ($body, $what) = @_;
    my $d = eval { $JSON->decode($body) };
    die "cannot decode $what: $@\n" unless defined $d || $body =~ /^\s*null\s*$/;
    return $d;
}

sub mock_faults {
    my ($self, $faults) = @_;
    $faults = [$faults] if ref $faults eq 'HASH';
    $self->_mock_call('POST', '/__mock/faults', $faults);
    return 1;
}

sub mock_config {
    my ($self, $cfg) = @_;
    $self->_mock_call('POST', '/__mock/config', $cfg);
    return 1;
}

sub mock_requests {
    my ($self) = @_;
    my $r = $self->_mock_call('GET', '/__mock/requests');
    my $d = _decode_or_die($r->{body}, 'mock requests');
    return ref $d eq 'ARRAY' ? @$d : ();
}

sub mock_reset {
    my ($self) = @_;
    $self->_mock_call('POST', '/__mock/reset', {});
    return 1;
}

sub mock_jobs {
    my ($self) = @_;
    my $r = $self->_mock_call('GET', '/__mock/jobs');
    my $d = _decode_or_die($r->{body}, 'mock jobs');
    return ref $d eq 'ARRAY' ? @$d : ();
}

sub mock_stats {
    my ($self) = @_;
    my $r = $self->_mock_call('GET', '/__mock/stats');
    return _decode_or_die($r->{body}, 'mock stats');
}

sub stop_mock {
    my ($self) = @_;
    my $pid = delete $self->{mock_pid} or return;
    kill 'TERM', $pid;
    my $st = _wait_pid($pid, 5);
    $st = _kill_hard($pid, 1) unless defined $st;
    delete $RUNNING{$pid};
    return $st;
}

###########################################################################
# DNS server (t/dns/dns.pl)

sub _dns_zone {
    my ($self, %zone) = @_;
    my $text = '';
    for my $n (sort keys %zone) {
        my $v = $zone{$n};
        $text .= "$n " . (ref $v ? join(' ', @$v) : $v) . "\n";
    }
    # a rename: the server never reads half a file
    $self->write_file('dns.zone.tmp', $text);
    rename "$self->{tmp}/dns.zone.tmp", "$self->{tmp}/dns.zone"
        or die "rename dns.zone: $!\n";
}

sub dns_set {
    my ($self, %zone) = @_;
    $self->_dns_zone(%zone);
    return 1;
}

sub start_dns {
    my ($self, %zone) = @_;
    die "dns already running\n" if $self->{dns_pid};
    my $tmp = $self->{tmp};
    $self->_dns_zone(%zone);
    unlink "$tmp/dns.out";
    my $script = "$REPO/t/dns/dns.pl";
    my $pid = $self->_spawn([ $^X, $script, '--port', $self->{dns_port} // 0,
                              '--zone', "$tmp/dns.zone",
                              '--log', "$tmp/dns.log" ],
                            "$tmp/dns.out", "$tmp/dns.err");
    $RUNNING{$pid} = 'dns';
    $self->{dns_pid} = $pid;

    my $deadline = Time::HiRes::time() + 10;
    while (Time::HiRes::time() < $deadline) {
        if (($self->read_file('dns.out') // '') =~ /^READY (\d+)\s*$/m) {
            return $self->{dns_port} = $1;
        }
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $RUNNING{$pid};
            delete $self->{dns_pid};
            die "dns.pl exited before READY\n" . ($self->read_file('dns.err') // '');
        }
        Time::HiRes::sleep(0.03);
    }
    _kill_hard($pid, 2);
    delete $self->{dns_pid};
    die "dns.pl did not print READY within 10 s\n";
}

# the port of the DNS server (kept when it is stopped and started again);
# a free one before it is started
sub dns_port { my $s = shift; $s->{dns_port} //= _free_port() }

sub dns_queries {
    my ($self) = @_;
    my @q;
    for my $l (split /\n/, $self->read_file('dns.log') // '') {
        my ($t, $name, $type, $answer) = split ' ', $l;
        push @q, { t => $t, name => $name, type => $type, answer => $answer };
    }
    return @q;
}

sub stop_dns {
    my ($self) = @_;
    my $pid = delete $self->{dns_pid} or return;
    kill 'TERM', $pid;
    my $st = _wait_pid($pid, 5);
    $st = _kill_hard($pid, 1) unless defined $st;
    delete $RUNNING{$pid};
    return $st;
}

###########################################################################
# HTTP client

sub _build_request {
    my ($self, $a) = @_;
    return $a->{raw} if defined $a->{raw};

    my $body = $a->{body};
    $body = $JSON->encode($body) if ref $body;
    utf8::encode($body) if defined $body && utf8::is_utf8($body);

    my $method = $a->{method} // (defined $body ? 'POST' : 'GET');
    my $path = $a->{path} // '/';
    my $port = $a->{port} // $self->port;

    my @h;
    my $hh = $a->{headers} // {};
    if (ref $hh eq 'HASH') {
        push @h, [$_, $hh->{$_}] for sort keys %$hh;
    } else {
        my @l = @$hh;
        push @h, [splice(@l, 0, 2)] while @l;
    }
    my %has = map { lc $_->[0] => 1 } @h;
    @h = grep { defined $_->[1] } @h;       # undef value: suppress a header

    unshift @h, ['Host', "127.0.0.1:$port"] unless $has{host};
    push @h, ['Connection', 'close'] unless $has{connection};

    my $payload = '';
    if (defined $body) {
        if ($a->{chunked}) {
            push @h, ['Transfer-Encoding', 'chunked'] unless $has{'transfer-encoding'};
            my $cs = $a->{chunk_size} || 1000;
            for (my $o = 0; $o < length $body; $o += $cs) {
                my $c = substr($body, $o, $cs);
                $payload .= sprintf("%x\r\n", length $c) . $c . "\r\n";
            }
            $payload .= "0\r\n\r\n";
        } else {
            push @h, ['Content-Length', length $body] unless $has{'content-length'};
            $payload = $body;
        }
    }

    return "$method $path HTTP/1.1\r\n"
         . join('', map { "$_->[0]: $_->[1]\r\n" } @h)
         . "\r\n" . $payload;
}

# returns undef if more data is needed (and !$eof), else a result hash
sub _parse_response {
    my ($raw, $eof, $head) = @_;
    my $pos = 0;
    while (1) {
        my $i = index($raw, "\r\n\r\n", $pos);
        if ($i < 0) {
            return undef unless $eof;
            return { status => 0, error => length $raw
                         ? 'incomplete response header' : 'connection closed without response' };
        }
        my @lines = split /\r\n/, substr($raw, $pos, $i - $pos);
        my $sl = shift @lines // '';
        my $bstart = $i + 4;
        unless ($sl =~ m{^HTTP/(\d+\.\d+) (\d{3})(?: (.*))?$}) {
            return { status => 0, error => "bad status line: $sl" };
        }
        my ($status, $reason) = ($2, $3 // '');
        if ($status >= 100 && $status < 200 && $status != 101) {
            $pos = $bstart;
            next;
        }
        my (%h, @list);
        for my $l (@lines) {
            my ($n, $v) = $l =~ /^([^:]+):\s*(.*?)\s*$/ or next;
            push @list, [$n, $v];
            $n = lc $n;
            $h{$n} = exists $h{$n} ? "$h{$n}, $v" : $v;
        }
        my %res = (status => $status, reason => $reason, headers => \%h,
                   header_list => \@list);

        if ($head || $status == 204 || $status == 304) {
            $res{body} = '';
            return \%res;
        }
        if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
            return undef if !$eof && substr($raw, -4) ne "\r\n\r\n";
            my ($body, $done) = _dechunk($raw, $bstart);
            return undef if !$done && !$eof;
            $res{body} = $body;
            $res{error} = 'truncated chunked body' unless $done;
            return \%res;
        }
        if (defined $h{'content-length'}) {
            my $cl = $h{'content-length'};
            my $have = length($raw) - $bstart;
            if ($have >= $cl) {
                $res{body} = substr($raw, $bstart, $cl);
                return \%res;
            }
            return undef unless $eof;
            $res{body} = substr($raw, $bstart);
            $res{error} = "truncated body ($have of $cl bytes)";
            return \%res;
        }
        return undef unless $eof;
        $res{body} = substr($raw, $bstart);
        return \%res;
    }
}

sub _dechunk {
    my ($raw, $p) = @_;
    my $body = '';
    while (1) {
        my $e = index($raw, "\r\n", $p);
        return ($body, 0) if $e < 0;
        my $line = substr($raw, $p, $e - $p);
        my ($hex) = $line =~ /^\s*([0-9a-fA-F]+)/ or return ($body, 0);
        my $n = hex $hex;
        $p = $e + 2;
        if ($n == 0) {
            return ($body, 1) if substr($raw, $p, 2) eq "\r\n";
            return ($body, index($raw, "\r\n\r\n", $p - 2) >= 0 ? 1 : 0);
        }
        return ($body, 0) if length($raw) < $p + $n + 2;
        $body .= substr($raw, $p, $n);
        $p += $n + 2;
    }
}

sub _run_requests {
    my ($self, $reqs, $timeout) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my @res;
    my @st;
    my $start = Time::HiRes::time();
    my $deadline = $start + $timeout;

    for my $k (0 .. $#$reqs) {
        my $a = $reqs->[$k];
        my $port = $a->{port} // $self->port;
        my $t0 = Time::HiRes::time();
        my $out = eval { $self->_build_request($a) };
        if (!defined $out) {
            $res[$k] = { status => 0, error => "bad request args: $@", elapsed => 0 };
            next;
        }
        my $addr = $a->{addr} // '127.0.0.1';
        my $s = IO::Socket::INET->new(PeerAddr => $addr, PeerPort => $port,
                                      Proto => 'tcp', Timeout => 5);
        if (!$s) {
            $res[$k] = { status => 0, error => "connect to $addr:$port: $!",
                         elapsed => Time::HiRes::time() - $t0 };
            next;
        }
        $s->blocking(0);
        push @st, { k => $k, s => $s, out => $out, off => 0, in => '', t0 => $t0,
                    head => uc($a->{method} // '') eq 'HEAD' };
    }

    my $finish = sub {
        my ($c, $eof, $err) = @_;
        my $r = _parse_response($c->{in}, 1, $c->{head});
        if (!$r->{status}) {
            $r->{error} = $err if defined $err && length $c->{in} == 0;
            $r->{error} .= " (write: $c->{werr})" if $c->{werr};
        }
        $r->{raw} = $c->{in};
        $r->{elapsed} = Time::HiRes::time() - $c->{t0};
        $r->{sent} = $c->{off};
        close $c->{s};
        $c->{done} = 1;
        $res[$c->{k}] = $r;
    };

    while (my @active = grep { !$_->{done} } @st) {
        my $now = Time::HiRes::time();
        if ($now >= $deadline) {
            for my $c (@active) {
                my $r = _parse_response($c->{in}, 0, $c->{head});
                if ($r) { $finish->($c, 0); next }
                $res[$c->{k}] = { status => 0, error => 'timeout', raw => $c->{in},
                                  elapsed => $now - $c->{t0}, sent => $c->{off} };
                close $c->{s};
                $c->{done} = 1;
            }
            last;
        }
        my %by = map { fileno($_->{s}) => $_ } @active;
        my $rs = IO::Select->new(map { $_->{s} } @active);
        my $ws = IO::Select->new(map { $_->{s} }
                                 grep { !$_->{wdone} && $_->{off} < length $_->{out} } @active);
        my ($r, $w) = IO::Select->select($rs, $ws->count ? $ws : undef, undef,
                                         _min(0.5, $deadline - $now));
        for my $fh (@{ $w || [] }) {
            my $c = $by{fileno $fh};
            my $n = syswrite($fh, $c->{out}, 262144, $c->{off});
            if (defined $n) {
                $c->{off} += $n;
            } elsif ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) {
                $c->{werr} = "$!";
                $c->{wdone} = 1;    # peer stopped reading: keep reading the response
            }
        }
        for my $fh (@{ $r || [] }) {
            my $c = $by{fileno $fh};
            next if $c->{done};
            my $n = sysread($fh, my $buf, 262144);
            if ($n) {
                $c->{in} .= $buf;
                $finish->($c, 0) if _parse_response($c->{in}, 0, $c->{head});
            } elsif (defined $n) {
                $finish->($c, 1, 'connection closed without response');
            } elsif ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) {
                $finish->($c, 1, "read: $!");
            }
        }
    }
    return @res;
}

sub _min { $_[0] < $_[1] ? $_[0] : $_[1] }

sub request {
    my ($self, %a) = @_;
    my ($r) = $self->_run_requests([\%a], $a{timeout} // 10);
    return $r;
}

sub _add_json {
    my ($r) = @_;
    $r->{json} = (defined $r->{body} && length $r->{body})
        ? eval { $JSON->decode($r->{body}) } : undef;
    return $r;
}

sub json_request {
    my ($self, %a) = @_;
    if (ref $a{body}) {
        $a{headers} //= {};
        if (ref $a{headers} eq 'HASH'
            && !grep { lc eq 'content-type' } keys %{ $a{headers} })
        {
            $a{headers} = json_headers(%{ $a{headers} });
        }
    }
    return _add_json($self->request(%a));
}

sub parallel_requests {
    my ($self, $reqs, %o) = @_;
    return $self->_run_requests($reqs, $o{timeout} // 15);
}

# a raw connected socket, for hand-made scenarios (slow clients, etc.)
sub raw_connect {
    my ($self, $port) = @_;
    return IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $port // $self->port, Proto => 'tcp', Timeout => 5);
}

###########################################################################
# polling and log assertions

sub wait_for {
    my ($self, $cb, $timeout, $interval) = @_;
    my $deadline = Time::HiRes::time() + ($timeout // 5);
    while (1) {
        my $v = $cb->();
        return $v if $v;
        return 0 if Time::HiRes::time() >= $deadline;
        Time::HiRes::sleep($interval // 0.05);
    }
}

sub wait_for_log {
    my ($self, $re, $timeout, $since) = @_;
    return $self->wait_for(sub {
        return $self->error_log_since($since) =~ $re ? 1 : 0;
    }, $timeout // 5) ? 1 : 0;
}

sub allow_log {
    my ($self, @re) = @_;
    push @{ $self->{log_allow} }, @re;
    return $self;
}

my $BAD_LOG = qr/\[(?:alert|crit|emerg)\]
               |exited\ on\ signal
               |exited\ with\ (?:fatal\ )?code\ [1-9]
               |open\ socket\ \#
               |AddressSanitizer|LeakSanitizer|runtime\ error:/x;

sub bad_log_lines {
    my ($self) = @_;
    my @bad;
    for my $l (split /\n/, $self->error_log) {
        next unless $l =~ $BAD_LOG;
        next if grep { $l =~ $_ } @{ $self->{log_allow} };
        push @bad, $l;
    }
    return @bad;
}

sub log_ok {
    my ($self, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @bad = ($self->bad_log_lines, @{ $self->{problems} });
    my $ok = Test::More::ok(!@bad, $name // 'error log has no alerts or crashes');
    if (!$ok) {
        @bad = (@bad[0 .. 29], '...') if @bad > 30;
        Test::More::diag(join "\n", @bad);
    }
    return $ok;
}

sub log_like {
    my ($self, $re, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $log = $self->error_log;
    my $ok = Test::More::ok($log =~ $re, $name // "error log matches $re");
    return $ok;
}

sub log_unlike {
    my ($self, $re, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $log = $self->error_log;
    my @m = grep { $_ =~ $re } split /\n/, $log;
    my $ok = Test::More::ok(!@m, $name // "error log does not match $re");
    Test::More::diag(join "\n", @m[0 .. _min(9, $#m)]) unless $ok;
    return $ok;
}

# Memory errors (invalid read/write/free, mismatched free, overlap) always
# fail.  Definite leaks fail only if the loss record's stack goes through the
# module (frames mentioning "dato"): the stripped packaged nginx itself leaks
# a few blocks per worker (ngx_set_environment, event init after a reload).
# TEST_NGINX_VALGRIND_ALL_LEAKS=1 makes every definite leak fail.
sub valgrind_problems {
    my ($self) = @_;
    my @bad;
    opendir my $d, $self->{tmp} or die "$self->{tmp}: $!\n";
    for my $f (sort grep /^valgrind\.\d+\.log$/, readdir $d) {
        my $c = $self->read_file($f) // '';
        my @blocks = split /^==\d+==[ \t]*\n/m, $c;
        for my $b (@blocks) {
            my $hit = $b =~ /Invalid (?:read|write|free)|Mismatched free|Source and destination overlap/;
            if (!$hit && $b =~ /are definitely lost in loss record/) {
                $hit = $ENV{TEST_NGINX_VALGRIND_ALL_LEAKS} || $b =~ /dato/i;
            }
            next unless $hit;
            my @l = split /\n/, $b;
            @l = (@l[0 .. 11], '    ...') if @l > 12;
            push @bad, "$f:\n" . join("\n", @l);
        }
    }
    closedir $d;
    return @bad;
}

sub valgrind_ok {
    my ($self, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @bad = $self->valgrind_problems;
    my $ok = Test::More::ok(!@bad, $name // 'valgrind reports no memory errors');
    Test::More::diag(join "\n", @bad[0 .. _min(9, $#bad)]) unless $ok;
    return $ok;
}

sub done {
    my ($self) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $self->stop if $self->{pid};
    $self->stop_mock if $self->{mock_pid};
    $self->stop_dns if $self->{dns_pid};
    $self->log_ok;
    $self->valgrind_ok if $self->{valgrind};
}

###########################################################################
# cleanup: no stray processes

sub DESTROY {
    my ($self) = @_;
    return unless ($self->{owner} // 0) == $$;
    local ($?, $!, $@);
    _kill_hard(delete $self->{pid}, 5) if $self->{pid};
    _kill_hard(delete $self->{mock_pid}, 2) if $self->{mock_pid};
    _kill_hard(delete $self->{dns_pid}, 2) if $self->{dns_pid};
}

END {
    if ($$ == $CREATOR) {
        local ($?, $!, $@);
        _kill_hard($_, 2) for keys %RUNNING;
    }
}

###########################################################################
# DatoCMS data helpers

# deterministic RFC 4122 v4 UUID in URL-safe base64 (22 chars) from an integer
sub uuid_id {
    my ($n) = @_;
    $n = int($n // 0);
    my $m = ($n * 2654435761 + 0x3c6ef372) & 0xffffffff;
    my $m2 = ($n * 40503 + 0x9e37) & 0xffff;
    my $bytes = pack('N n n N N',
        ($m & 0x7fffffff) | 0x10000000,      # top bit clear, like generateId
        ($n >> 32) & 0xffff,
        0x4000 | ($m2 & 0x0fff),             # version 4
        0x80000000 | (($m ^ 0x5bd1e995) & 0x3fffffff),   # variant 10
        $n & 0xffffffff);
    my $b = MIME::Base64::encode_base64($bytes, '');
    $b =~ tr{+/}{-_};
    $b =~ s/=+\z//;
    return $b;
}

sub webhook_data {
    my (%a) = @_;
    my $status = $a{status} // 'draft';
    my $ts = $a{event_triggered_at}
        // strftime('%Y-%m-%dT%H:%M:%S.000Z', gmtime);
    my $published = $status eq 'draft' ? undef : $ts;

    my $entity = $a{entity} // {
        (exists $a{id} && !defined $a{id} ? () : (id => $a{id} // uuid_id(1))),
        type => $a{entity_kind} // 'item',
        attributes => $a{attributes} // {
            title => 'Hello from the test suite',
            slug  => 'hello-from-the-test-suite',
        },
        relationships => {
            item_type => { data => { type => 'item_type', id => $a{item_type} // '2079393' } },
            creator   => { data => { type => 'account', id => '87234' } },
        },
        meta => {
            created_at => '2024-05-14T09:12:03.551+00:00',
            updated_at => $ts,
            published_at => $published,
            publication_scheduled_at => undef,
            unpublishing_scheduled_at => undef,
            first_published_at => $published,
            is_valid => JSON::PP::true,
            is_current_version_valid => JSON::PP::true,
            is_published_version_valid => JSON::PP::true,
            status => $status,
            current_version => 'KnN0WoQJTQWYbm4Ro3T8Hg',
            stage => undef,
        },
    };

    my $primary = exists $a{is_environment_primary}
        ? ($a{is_environment_primary} ? JSON::PP::true : JSON::PP::false)
        : JSON::PP::true;

    my %d = (
        site_id => $a{site_id} // '124833',
        webhook_id => $a{webhook_id} // '31274',
        environment => $a{environment} // 'main',
        is_environment_primary => $primary,
        entity_type => $a{entity_type} // 'item',
        event_type => $a{event_type} // 'update',
        entity => $entity,
        related_entities => $a{related_entities} // [],
        webhook_call_id => $a{webhook_call_id} // '103216210',
        event_triggered_at => $ts,
        attempted_auto_retries_count => $a{attempted_auto_retries_count} // 0,
    );
    $d{previous_entity} = $a{previous_entity} if exists $a{previous_entity};

    # extra => { key => value } adds/overrides top-level keys; undef deletes
    while (my ($k, $v) = each %{ $a{extra} // {} }) {
        if (defined $v) { $d{$k} = $v } else { delete $d{$k} }
    }
    return \%d;
}

sub webhook { $JSON->encode(webhook_data(@_)) }

sub encode_json { $JSON->encode($_[-1]) }
sub decode_json { $JSON->decode($_[-1]) }

###########################################################################
# helpers shared by the test files (listed in the header comment)

# the record ids uuid_id($from) .. uuid_id($from + $n - 1)
sub ids_of {
    my ($from, $n) = @_;
    return map { uuid_id($_) } $from .. $from + $n - 1;
}

# a webhook (JSON text) for record $id; %a as for webhook_data()
sub hook { my ($id, %a) = @_; return webhook(id => $id, %a) }

# the body {"ids":[...]} (JSON text)
sub ids_body { return $JSON->encode({ ids => [@_] }) }

# a bulk publish body (data, as DatoCMS's own bulk publish call has it)
sub bulk_body {
    my (@ids) = @_;
    return { data => { type => 'item_bulk_publish_operation',
                       relationships => { items => { data => [
                           map { { type => 'item', id => $_ } } @ids ] } } } };
}

# request headers with Content-Type: application/json (a new hash each time)
sub json_headers { return { 'Content-Type' => 'application/json', @_ } }

# one POST of JSON for parallel_requests(); data in $body is encoded
sub post_req {
    my ($path, $body, %a) = @_;
    $body = $JSON->encode($body) if ref $body;
    return { method => 'POST', path => $path, headers => json_headers(),
             body => $body, %a };
}

# the job ids in the data[] of a webhook's answer (json_request() result)
sub jobs_of {
    my ($r) = @_;
    return map { $_->{id} } grep { ($_->{type} // '') eq 'job' }
           @{ (($r->{json} || {})->{data}) || [] };
}

# the most of @calls (mock records) that landed within any $w seconds
sub max_in_window {
    my ($w, @calls) = @_;
    my @t = sort { $a <=> $b } map { $_->{t} } @calls;
    my $max = 0;
    my $j = 0;
    for my $i (0 .. $#t) {
        $j++ while $t[$i] - $t[$j] >= $w;
        $max = $i - $j + 1 if $i - $j + 1 > $max;
    }
    return $max;
}

# POST $body (data is encoded) with Content-Type: application/json;
# %a adds or overrides request() arguments; the answer as json_request()
sub post_json {
    my ($self, $path, $body, %a) = @_;
    $body = $JSON->encode($body) if ref $body;
    return $self->json_request(method => 'POST', path => $path, body => $body,
                               headers => json_headers(), %a);
}

# the mock's bulk publish calls (POST /items/bulk/publish), oldest first
sub publishes {
    my ($self) = @_;
    my @c = sort { $a->{t} <=> $b->{t} }
            grep { $_->{method} eq 'POST'
                   && $_->{path} =~ m{^/items/bulk/publish(?:\?|\z)} }
            $self->mock_requests;
    return @c;
}

# the bulk publish calls that carry at least one of @ids, oldest first
sub calls_for {
    my ($self, @ids) = @_;
    my %want = map { $_ => 1 } @ids;
    my @c = grep { grep { $want{$_} } @{ $_->{ids} || [] } } $self->publishes;
    return @c;
}

# { id => number of calls } over those of @calls (mock records) that the
# mock answered 202
sub published_ids {
    my (@calls) = @_;
    my %ids;
    for my $c (@calls) {
        next unless $c->{status} == 202;
        $ids{$_}++ for @{ $c->{ids} || [] };
    }
    return \%ids;
}

# the ids among @ids that were part of a call the mock answered 202
sub published {
    my ($self, @ids) = @_;
    my $got = published_ids($self->calls_for(@ids));
    return grep { $got->{$_} } @ids;
}

# wait (up to $timeout s) until every one of @ids is published
sub wait_published {
    my ($self, $timeout, @ids) = @_;
    return $self->wait_for(sub { $self->published(@ids) == @ids }, $timeout, 0.05);
}

# the error.log lines that give records up
sub gave_up_lines {
    my ($self) = @_;
    return grep { /gave up publishing/ } split /\n/, $self->error_log;
}

# { id => 1 } for every id named in an "[error] ... gave up publishing ...,
# records (part i of n): ID ID ..." line
sub gave_up_ids {
    my ($self) = @_;
    my %g;
    for my $l ($self->gave_up_lines) {
        next unless $l =~ /\[error\].*gave up publishing/;
        my ($list) = $l =~ /records \(part \d+ of \d+\): (.*)$/ or next;
        $g{$_} = 1 for grep { length } split /[\s,]+/, $list;
    }
    return \%g;
}

# the promise: every one of @ids (those answered 2xx) reached the mock in a
# call answered 202, or is named in a "gave up publishing" error.log line.
# One test named $name; returns true if it passed.
sub promise_ok {
    my ($self, $name, @ids) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my %seen;
    @ids = grep { !$seen{$_}++ } @ids;
    my %pub = map { $_ => 1 } $self->published(@ids);
    my $gave = $self->gave_up_ids;
    my @lost = grep { !$pub{$_} && !$gave->{$_} } @ids;
    Test::More::ok(@ids && !@lost, $name)
        or Test::More::diag('lost: ' . join(' ', @lost[0 .. _min(9, $#lost)])
                            . (@lost > 10 ? ' ...' : ''));
    return !@lost;
}

# a POST of JSON on a raw socket, left unread (for answers that come later,
# or clients that go away): the socket, or undef
sub raw_send {
    my ($self, $path, $body) = @_;
    $body = $JSON->encode($body) if ref $body;
    my $s = $self->raw_connect or return;
    my $req = $self->_build_request({ method => 'POST', path => $path, body => $body,
                                      headers => json_headers() });
    local $SIG{PIPE} = 'IGNORE';
    syswrite($s, $req) == length $req or return;
    return $s;
}

# the answer on a raw_send() socket within $timeout s (then closed), parsed
# as json_request() does
sub raw_read {
    my ($self, $s, $timeout) = @_;
    return { status => 0, error => 'not sent' } unless $s;
    my $buf = '';
    my $deadline = Time::HiRes::time() + $timeout;
    my $sel = IO::Select->new($s);
    while ((my $left = $deadline - Time::HiRes::time()) > 0) {
        next unless $sel->can_read($left);
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
    }
    close $s;
    my $r = _parse_response($buf, 1, 0);
    $r->{raw} = $buf;
    return _add_json($r);
}

1;
