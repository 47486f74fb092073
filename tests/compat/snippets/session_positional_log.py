import remotior_sensus

rs = remotior_sensus.Session(2, 2000, log_level=10)
output = rs.band_calc(
    '"nir" * 2',
    "$DATA/out/session_positional_log/double.tif",
    [["$DATA/s2/S2_B08.tif", "nir"]],
)
print(output.check)
print(output.paths)
rs.close(log_path="session.log")
