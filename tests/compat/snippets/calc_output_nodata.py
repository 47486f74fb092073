import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_calc(
    input_raster_list=["$DATA/s2/S2_B02.tif", "$DATA/s2/S2_B04.tif"],
    output_path="$DATA/out/calc_output_nodata/ratio.tif",
    expression_string='"blue" / "red"',
    input_name_list=["blue", "red"],
    output_nodata=-9999,
    output_datatype="Float32",
)
print(output.check)
print(output.paths)
rs.close()
