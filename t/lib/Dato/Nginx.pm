package Dato::Nginx;

# The harness object and the nginx it runs: a private temporary directory,
# free loopback ports, the generated nginx.conf, starting, reloading and
# stopping nginx, "nginx -t", and reading error.log.  DatoTest inherits
# from this class (and from Dato::Mock, Dato::DNS, Dato::HTTP and
# Dato::Assert, whose methods work on the same object).
#
#   DatoTest->new(%o)      workers, log_level ('debug'; t/20-logs.t uses
#                          'error' as Debian's nginx.conf), master, valgrind,
#                          no_module, nginx, module, mock_script
#   $t->run(%c), $t->try_run(%c), $t->reload(%c), $t->test_conf(%c)
#                          with the configuration %c: main, events, http
#                          (text at those levels), or raw (a whole file);
#                          %%PORT%%, %%PORT2%%, %%TMP%% and %%MOCK%% are
#                          replaced
#   $t->stop, $t->stop_fast, $t->pid, $t->worker_pids
#   $t->error_log, $t->log_mark, $t->error_log_since($mark),
#   $t->wait_for($cb, $timeout), $t->wait_for_log($re, $timeout, $mark),
#   $t->allow_log(@re), $t->bad_log_lines, $t->valgrind_problems,
#   $t->gave_up_lines, $t->gave_up_ids
#   api_conf(%a)           the http{} text of a dato_publish server that
#                          talks to the mock (a function, see below)
#
# Environment: TEST_NGINX_BINARY, DATO_MODULE (a path, or "static" for an
# nginx built with --add-module), TEST_NGINX_LEAVE (keep the temp dir),
# TEST_NGINX_USE_VALGRIND, TEST_NGINX_MASTER=off,
# TEST_NGINX_VALGRIND_ALL_LEAKS, TEST_NGINX_EVENTS=poll|select (adds "use
# poll;" or "use select;" to the events block: the module on nginx's
# other event methods).

use strict;
use warnings;

use Test::More ();
use IO::Socket::INET;
use File::Temp ();
use File::Spec;
use File::Basename ();
use POSIX qw(:sys_wait_h);
use Time::HiRes ();
use Exporter 'import';
use Dato::Process qw(spawn track untrack wait_pid children kill_hard
                     status_str which free_port slurp);

our @EXPORT_OK = qw(api_conf repo_root);

# repository root: t/lib/Dato/Nginx.pm -> <repo>
my $REPO = do {
    my $f = File::Spec->rel2abs(__FILE__);
    my $d = $f;
    $d = File::Basename::dirname($d) for 1 .. 4;
    $d;
};

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

    if ($self->{valgrind} && !which('valgrind')) {
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

sub port  { my $s = shift; $s->{port}  //= free_port() }
sub port2 { my $s = shift; $s->{port2} //= free_port() }

###########################################################################
# files

sub _path {
    my ($self, $name) = @_;
    return File::Spec->file_name_is_absolute($name) ? $name : "$self->{tmp}/$name";
}

# a file's bytes, or undef if there is none
sub read_file {
    my ($self, $name) = @_;
    my $path = $self->_path($name);
    return -e $path ? slurp($path) : undef;
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
        my $conns = $a{worker_connections} // 1024;

        # TEST_NGINX_EVENTS=poll|select: the module on nginx's other event
        # methods (epoll is the default on Linux)
        my $ev = $ENV{TEST_NGINX_EVENTS} // '';
        my $use = $ev =~ /^(?:poll|select)\z/ ? "    use $ev;\n" : '';

        $conf = <<"EOF";
${load}daemon off;
master_process $master;
worker_processes $workers;
pid $tmp/nginx.pid;
error_log $elog $level;

$main

events {
    worker_connections $conns;
${use}$events
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

# The http{} text of one server on %%PORT%% whose dato_publish locations
# talk to the mock with the mock's default token: what most tests run.
#
#   server => the server{} content (its locations, access_log ...)
#   http   => more lines at http{} level
#   token  => the dato_api_token (test-token)
#   listen => more listen parameters ("reuseport")
sub api_conf {
    my (%a) = @_;
    my $token  = $a{token} // 'test-token';
    my $http   = $a{http} // '';
    $http =~ s/^(?=\S)/    /mg;
    my $listen = defined $a{listen} ? " $a{listen}" : '';
    my $server = $a{server} // '';
    return <<"EOF2";
    dato_api_url %%MOCK%%;
    dato_api_token $token;
$http
    server {
        listen 127.0.0.1:%%PORT%%$listen;

$server
    }
EOF2
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
    my $pid = spawn([ $self->_nginx_argv($conf, $elog) ], "$tmp/nginx.stderr");
    track($pid, 'nginx');
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
            untrack($pid);
            delete $self->{pid};
            die "nginx failed to start (" . status_str($st) . ")\n"
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
            $workers_ok = children($pid) >= $self->{running_workers};

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
    return sort { $a <=> $b } children($self->{pid});
}

sub test_conf {
    my ($self, %a) = @_;
    my $tmp = $self->{tmp};
    my $elog = "$tmp/test_conf.error.log";
    unlink $elog, "$tmp/test_conf.out";
    my $conf = $self->write_conf(%a, file => 'nginx-test.conf', error_log => $elog);
    my $pid = spawn([ $self->_nginx_argv($conf, $elog, '-t') ], "$tmp/test_conf.out");
    my $st = wait_pid($pid, 30);
    if (!defined $st) {
        $st = kill_hard($pid, 1);
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
    my @kids = children($pid);

    kill 'QUIT', $pid;
    my $st = wait_pid($pid, $grace);
    if (!defined $st) {
        push @{ $self->{problems} }, "nginx did not stop gracefully within $grace s";
        $st = kill_hard($pid, 5);
    }
    kill 'KILL', grep { kill 0, $_ } @kids;   # orphaned workers, if any
    untrack($pid);
    delete $self->{pid};
    $self->{exit_status} = $st;
    if (defined $st && $st != 0) {
        push @{ $self->{problems} }, 'nginx master ' . status_str($st);
    }
    return $st;
}

sub stop_fast {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    my @kids = children($pid);
    kill 'TERM', $pid;
    my $st = wait_pid($pid, $self->{valgrind} ? 60 : 10);
    if (!defined $st) {
        push @{ $self->{problems} }, 'nginx did not exit on SIGTERM';
        $st = kill_hard($pid, 1);
    }
    kill 'KILL', grep { kill 0, $_ } @kids;
    untrack($pid);
    delete $self->{pid};
    $self->{exit_status} = $st;
    return $st;
}

sub _stop_hard {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill_hard($pid, 5);
}


###########################################################################
# polling and the error log

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


# the error.log lines that give records up
sub gave_up_lines {
    my ($self) = @_;
    return grep { /gave up (?:publishing|unpublishing|moving)/ }
           split /\n/, $self->error_log;
}

# { id => 1 } for every id named in an "[error] ... gave up publishing ...,
# records (part i of n): ID ID ..." line
sub gave_up_ids {
    my ($self) = @_;
    my %g;
    for my $l ($self->gave_up_lines) {
        next unless $l =~ /\[error\].*gave up (?:publishing|unpublishing|moving)/;
        my ($list) = $l =~ /records \(part \d+ of \d+\): (.*)$/ or next;
        $g{$_} = 1 for grep { length } split /[\s,]+/, $list;
    }
    return \%g;
}


###########################################################################
# cleanup: no stray processes

sub DESTROY {
    my ($self) = @_;
    return unless ($self->{owner} // 0) == $$;
    local ($?, $!, $@);
    kill_hard(delete $self->{pid}, 5) if $self->{pid};
    kill_hard(delete $self->{mock_pid}, 2) if $self->{mock_pid};
    kill_hard(delete $self->{dns_pid}, 2) if $self->{dns_pid};
}

1;
