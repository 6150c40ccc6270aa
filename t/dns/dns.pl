#!/usr/bin/env perl
# dns.pl - a small DNS server for the ngx_http_dato_module tests: answers
# queries over UDP from a zone file that the test may rewrite at any time
# (it is read again for every query).  Core Perl only.
#
#   perl t/dns/dns.pl --port P --zone FILE [--host 127.0.0.1] [--ttl S]
#                     [--log FILE] [--lifetime S]
#
#   --port P      UDP port (0: a free one); prints "READY <port>" when bound
#   --host H      loopback address to bind (default 127.0.0.1)
#   --zone FILE   the answers, one name per line ("#" starts a comment):
#                   api.dato.test  127.0.0.1 127.0.0.3   A records, in order
#                   gone.test      nxdomain              NXDOMAIN
#                   sick.test      servfail              SERVFAIL
#                   mute.test      drop                  no answer at all
#                 "*" as the name stands for any name not listed.  A name
#                 neither listed nor matched gets NXDOMAIN; a missing file
#                 answers nothing (DNS down).  A listed name gets its A
#                 records for A queries and an empty answer for any other
#                 type (AAAA included).
#   --ttl S       TTL of the A records (default 1)
#   --log FILE    one line per query: "<epoch> <name> <type> <answer>"
#   --lifetime S  exit after S seconds (default 600)

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use Getopt::Long qw(GetOptions);
use Time::HiRes ();

my %opt = (host => '127.0.0.1', ttl => 1, lifetime => 600);

GetOptions(\%opt, 'port=i', 'host=s', 'zone=s', 'ttl=i', 'log=s',
           'lifetime=f')
    && defined $opt{port} && defined $opt{zone}
    or die "usage: dns.pl --port P --zone FILE [options]\n";

die "dns.pl: --host must be a loopback IPv4 address\n"
    unless $opt{host} =~ /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/;

my $sock = IO::Socket::INET->new(LocalAddr => $opt{host},
                                 LocalPort => $opt{port}, Proto => 'udp')
    or die "dns.pl: cannot bind $opt{host}:$opt{port}: $!\n";

$| = 1;
print "READY ", $sock->sockport, "\n";

my $log;
if (defined $opt{log}) {
    open $log, '>>', $opt{log} or die "dns.pl: $opt{log}: $!\n";
    $log->autoflush(1);
}

$SIG{TERM} = $SIG{INT} = sub { exit 0 };

# what the zone file says of $name: [ 'a', @addrs ], [ 'nxdomain' ], ...
sub lookup {
    my ($name) = @_;
    open my $fh, '<', $opt{zone} or return ['drop'];
    my ($any, $hit);
    while (my $l = <$fh>) {
        $l =~ s/#.*//;
        my ($n, @v) = split ' ', $l;
        next unless defined $n && @v;
        my $ans = $v[0] =~ /^(nxdomain|servfail|drop)$/i ? [lc $v[0]]
                                                          : ['a', @v];
        if (lc $n eq $name) { $hit = $ans; last }
        $any = $ans if $n eq '*';
    }
    close $fh;
    return $hit // $any // ['nxdomain'];
}

my %TYPE = (1 => 'A', 28 => 'AAAA', 5 => 'CNAME', 33 => 'SRV');
my $sel = IO::Select->new($sock);
my $end = Time::HiRes::time() + $opt{lifetime};

while (Time::HiRes::time() < $end) {
    next unless $sel->can_read(1);
    my $peer = $sock->recv(my $q, 512) // next;
    next if length $q < 17;

    my ($id, $flags, $qd) = unpack 'n n n', $q;
    next if $flags & 0x8000 || $qd != 1;

    # the question: labels, then type and class
    my ($i, @labels) = (12);
    while ($i < length $q) {
        my $len = ord substr($q, $i, 1);
        $i++;
        last if $len == 0;
        push @labels, substr($q, $i, $len);
        $i += $len;
    }
    next if $i + 4 > length $q;
    my ($qtype, $qclass) = unpack 'n n', substr($q, $i, 4);
    my $question = substr($q, 12, $i + 4 - 12);
    my $name = lc join '.', @labels;

    my $ans = lookup($name);
    my $kind = $ans->[0];
    my @addrs = grep { /^\d{1,3}(?:\.\d{1,3}){3}$/ }
                $kind eq 'a' && $qtype == 1 && $qclass == 1
                ? @{$ans}[1 .. $#$ans] : ();

    printf $log "%.3f %s %s %s\n", Time::HiRes::time(), $name,
        $TYPE{$qtype} // $qtype, $kind eq 'a' ? join(',', @addrs) || '-'
                                              : $kind
        if $log;

    next if $kind eq 'drop';

    my $rcode = $kind eq 'nxdomain' ? 3 : $kind eq 'servfail' ? 2 : 0;

    # QR, AA, RA, the query's RD
    my $rflags = 0x8000 | 0x0400 | 0x0080 | ($flags & 0x0100) | $rcode;

    my $r = pack('n n n n n n', $id, $rflags, 1, scalar @addrs, 0, 0)
            . $question;

    # the name is the question's (a pointer to offset 12)
    $r .= pack('n n n N n C4', 0xc00c, 1, 1, $opt{ttl}, 4, split /\./)
        for @addrs;

    $sock->send($r, 0, $peer);
}
