import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_sieve(
    input_bands=["$DATA/lc/classes.tif", "$DATA/lc/classes2.tif"],
    size=3,
    output_path=[
        "$DATA/out/sieve_output_list/first.tif",
        "$DATA/out/sieve_output_list/second.tif",
    ],
)
print(output.check)
print(output.paths)
rs.close()
