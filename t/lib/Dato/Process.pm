package Dato::Process;

# Processes the tests start (nginx, the mock API, the DNS server, promtool
# ...): spawning, waiting, killing, and the guarantee that none outlives
# the test.  Functions; Dato::Nginx, Dato::Mock and Dato::DNS use them,
# DatoTest re-exports the public ones.
#
#   spawn($argv, $out, $err)   fork and exec @$argv, stdout appended to $out,
#                              stderr to $err (or $out): the pid
#   track($pid, $kind), untrack($pid)
#                              a process to kill at exit, or no longer
#   wait_pid($pid, $timeout)   its wait status, or undef if still running
#   children($ppid)            the pids whose parent is $ppid
#   kill_hard($pid, $grace)    TERM, KILL after $grace s (and its children)
#   stop_pid($pid)             TERM, KILL after 5 s: for the mock and DNS
#   start_ready($what, $argv, $out, $err)
#                              spawn, then wait for "READY <port>" in $out:
#                              (pid, port)
#   status_str($status)        "exited with code N", "killed by signal N"
#   which($prog)               the path of $prog, or undef
#   free_port()                a free loopback TCP port, never the same twice
#   slurp($path)               a file's bytes, '' if it cannot be read

use strict;
use warnings;

use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes ();
use Exporter 'import';

our @EXPORT_OK = qw(spawn track untrack wait_pid children kill_hard stop_pid
                    start_ready status_str which free_port slurp);

# processes started by this test process: pid => kind
my %RUNNING;
my $CREATOR = $$;
my %USED_PORTS;

sub track   { $RUNNING{ $_[0] } = $_[1] // 'process' }
sub untrack { delete $RUNNING{ $_[0] } }

sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return '';
    local $/;
    my $c = <$fh>;
    close $fh;
    return $c // '';
}

sub spawn {
    my ($argv, $out, $err) = @_;
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
sub wait_pid {
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

sub children {
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
sub kill_hard {
    my ($pid, $grace) = @_;
    my @kids = children($pid);
    kill 'TERM', $pid;
    my $st = wait_pid($pid, $grace // 5);
    if (!defined $st) {
        kill 'KILL', $pid;
        $st = wait_pid($pid, 5);
    }
    kill 'KILL', grep { kill 0, $_ } @kids;
    untrack($pid);
    return $st;
}

sub stop_pid {
    my ($pid) = @_;
    kill 'TERM', $pid;
    my $st = wait_pid($pid, 5);
    $st = kill_hard($pid, 1) unless defined $st;
    untrack($pid);
    return $st;
}

# The mock and the DNS server print "READY <port>" once they listen.
sub start_ready {
    my ($what, $argv, $out, $err) = @_;
    unlink $out;
    my $pid = spawn($argv, $out, $err);
    track($pid, $what);

    my $deadline = Time::HiRes::time() + 10;
    while (Time::HiRes::time() < $deadline) {
        return ($pid, $1) if slurp($out) =~ /^READY (\d+)\s*$/m;
        if (waitpid($pid, WNOHANG) == $pid) {
            my $st = $?;
            untrack($pid);
            die "$what exited before READY (" . status_str($st) . ")\n"
                . slurp($err);
        }
        Time::HiRes::sleep(0.03);
    }
    kill_hard($pid, 2);
    die "$what did not print READY within 10 s\n" . slurp($err);
}

sub status_str {
    my ($st) = @_;
    return 'still running' unless defined $st;
    return 'exited with code ' . ($st >> 8) if ($st & 127) == 0;
    return 'killed by signal ' . ($st & 127);
}

# the path of program $prog: on $PATH, else in the usual system directories
sub which {
    my ($prog) = @_;
    for my $d ((split /:/, $ENV{PATH} // ''),
               qw(/usr/bin /usr/local/bin /usr/sbin))
    {
        return "$d/$prog" if -x "$d/$prog";
    }
    return;
}

sub free_port {
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

END {
    if ($$ == $CREATOR) {
        local ($?, $!, $@);
        kill_hard($_, 2) for keys %RUNNING;
    }
}

1;
